//! The fuzz harness of `tests/fuzz_readers.rs`: a seeded mutator over real files, a
//! runner with a hang watchdog and panic collection, and a global allocator that caps the
//! heap of the thread running a case.
//!
//! Contract: [`fuzz`] runs `VLGUARD_FUZZ_ITERS` (or the target's own count) cases of one
//! [`Target`] on a worker thread, each a seed with one to four stacked mutations
//! ([`mutate`]); case `n`'s input depends only on the seed (`VLGUARD_FUZZ_SEED`, fixed by
//! default), the target's name and `n`, so `VLGUARD_FUZZ_REPLAY=n` rebuilds it alone. It
//! fails the test when a case panics (inputs saved under the target folder, grouped by
//! panic site), runs longer than [`HANG`], or would take the thread's live heap past
//! [`CAP`] (the allocator then returns null, which aborts the binary after a message
//! naming the reader and the case: the readers must check sizes before they allocate).

#![allow(dead_code)] // Each helper is used by some of the fuzz tests, not all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

/// The most one input may make a reader hold at once. The largest legitimate need is an
/// image at Pillow's pixel limit: 2 * 89,478,485 pixels of RGB, 512 MiB.
pub const CAP: usize = 768 << 20;
/// The longest one input may take.
pub const HANG: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ allocation cap

/// The system allocator, counting each thread's live bytes while a case runs on it.
pub struct Capped;

#[global_allocator]
static ALLOC: Capped = Capped;

thread_local! {
    /// The reader and case running on this thread; `None` outside a case.
    static CASE: Cell<Option<(&'static str, u64)>> = const { Cell::new(None) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// Counts `n` more bytes; `false` (with a message) when that passes the cap.
pub fn grow(n: usize) -> bool {
    let Ok(Some((reader, case))) = CASE.try_with(Cell::get) else {
        return true;
    };
    let live = LIVE.with(|l| l.get()).saturating_add(n);
    if live > CAP {
        let mut msg = StackText::default();
        let _ = std::fmt::Write::write_fmt(
            &mut msg,
            format_args!(
                "\nfuzz_readers: {reader}: case {case} asked for {n} bytes with {} live, over the cap of {CAP}: replay it with VLGUARD_FUZZ_REPLAY={case}\n",
                live - n
            ),
        );
        // SAFETY: writes a valid buffer to stderr; no allocation on this path.
        unsafe { libc::write(2, msg.buf.as_ptr().cast(), msg.len) };
        return false;
    }
    LIVE.with(|l| l.set(live));
    PEAK.with(|p| p.set(p.get().max(live)));
    true
}

pub fn shrink(n: usize) {
    if let Ok(Some(_)) = CASE.try_with(Cell::get) {
        LIVE.with(|l| l.set(l.get().saturating_sub(n)));
    }
}

// SAFETY: every call is passed to `System` unchanged, or refused with a null pointer.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            if !grow(new_size - layout.size()) {
                return std::ptr::null_mut();
            }
        } else {
            shrink(layout.size() - new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A message built without the heap, for the allocator's own use.
pub struct StackText {
    buf: [u8; 512],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 512],
            len: 0,
        }
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

// ------------------------------------------------------------------ mutation

/// splitmix64: small, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One real file and the byte ranges that describe the rest of it (headers, tables,
/// directories), where most mutations land.
pub struct Seed {
    pub bytes: Vec<u8>,
    pub focus: Vec<Range<usize>>,
}

/// One range as a focus list.
#[allow(clippy::single_range_in_vec_init)] // A list of one range is meant, not its items.
pub fn span(range: Range<usize>) -> Vec<Range<usize>> {
    vec![range]
}

impl Seed {
    pub fn whole(bytes: Vec<u8>) -> Seed {
        let focus = span(0..bytes.len());
        Seed { bytes, focus }
    }
}

pub const BYTES: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'-', b'\n'];
pub const INTS: [u64; 10] = [
    0,
    1,
    0x7f,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    1 << 40,
];
pub const NUMBERS: [&str; 14] = [
    "0",
    "-1",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "1e309",
    "-0",
    "2147483647",
    "65536",
    "100000",
    "0.5",
];

/// A position: in a focus range four times in five, else anywhere.
pub fn position(rng: &mut Rng, len: usize, focus: &[Range<usize>]) -> usize {
    let ranges: Vec<&Range<usize>> = focus.iter().filter(|r| r.start < len).collect();
    if !ranges.is_empty() && rng.below(5) != 0 {
        let r = rng.pick(&ranges);
        return r.start + rng.below(r.end.min(len) - r.start);
    }
    rng.below(len + 1)
}

/// A mutated copy of one of `seeds`.
pub fn mutate(rng: &mut Rng, seeds: &[Seed], tokens: &[&[u8]]) -> Vec<u8> {
    let seed = rng.pick(seeds);
    let mut data = seed.bytes.clone();
    let limit = seed.bytes.len() * 2 + 4096;
    for _ in 0..1 + rng.below(4) {
        let at = position(rng, data.len(), &seed.focus);
        let long = rng.below(4) == 0;
        let span = 1 + rng.below(if long { 512 } else { 16 });
        let end = (at + span).min(data.len());
        match rng.below(10) {
            0 if at < data.len() => data[at] ^= 1 << rng.below(8),
            1 if at < data.len() => data[at] = *rng.pick(&BYTES),
            2 => {
                // Length-field inflation: an interesting integer, LE or BE, 2/4/8 bytes.
                let width = *rng.pick(&[2usize, 4, 8]);
                let v = *rng.pick(&INTS);
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    (v << (64 - 8 * width as u32).min(63)).to_be_bytes()
                };
                let n = width.min(data.len() - at);
                data[at..at + n].copy_from_slice(&bytes[..n]);
            }
            3 => data.truncate(at),
            4 => {
                data.drain(at..end);
            }
            5 => {
                let from = position(rng, data.len(), &seed.focus);
                let chunk = data[from..(from + span).min(data.len())].to_vec();
                data.splice(at..at, chunk);
            }
            6 => {
                let other = &rng.pick(seeds).bytes;
                let from = rng.below(other.len() + 1);
                let chunk = &other[from..(from + span).min(other.len())];
                data.splice(at..end, chunk.iter().copied());
            }
            7 if !tokens.is_empty() => {
                let token = *rng.pick(tokens);
                data.splice(at..at, token.iter().copied());
            }
            8 => inflate_number(rng, &mut data, at),
            _ => {
                for b in &mut data[at..end.min(at + 8)] {
                    *b = rng.next() as u8;
                }
            }
        }
        data.truncate(limit);
    }
    data
}

/// Replaces the decimal number at or after `at` with an extreme one.
pub fn inflate_number(rng: &mut Rng, data: &mut Vec<u8>, at: usize) {
    let Some(start) = (at..data.len()).find(|&i| data[i].is_ascii_digit()) else {
        return;
    };
    let end = (start..data.len())
        .find(|&i| !data[i].is_ascii_digit())
        .unwrap_or(data.len());
    data.splice(start..end, rng.pick(&NUMBERS).bytes());
}

// ------------------------------------------------------------------ the harness

/// Feeds one input to a reader (with a scratch folder for readers that take paths).
pub type Reader = Box<dyn Fn(&[u8], &Scratch) -> bool + Send + Sync>;

/// One reader under test.
pub struct Target {
    pub name: &'static str,
    pub seeds: Vec<Seed>,
    /// Format tokens spliced in by the mutator.
    pub tokens: &'static [&'static [u8]],
    /// Repairs checksums after mutation, so the reader looks past them.
    pub fixup: fn(&mut [u8]),
    /// Executions when `VLGUARD_FUZZ_ITERS` is not set.
    pub iterations: u64,
    /// Feeds one input to the reader; any error it returns is a fine outcome.
    /// Whether the reader accepted the input (a mutator that only ever produced rejected
    /// inputs would test the first check alone).
    pub run: Reader,
}

pub fn no_fixup(_: &mut [u8]) {}

/// A folder for readers that take paths, on tmpfs when there is one.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        };
        Scratch {
            dir: dir.expect("scratch folder"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` as `name` in the scratch folder and returns its path.
    pub fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("scratch write");
        path
    }
}

/// A panic met by a case, by where it happened.
pub struct Finding {
    pub message: String,
    pub first_case: u64,
    pub count: u64,
    pub saved: PathBuf,
}

thread_local! {
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Panics inside a case are recorded for the report instead of printed; any other panic
/// goes to the default hook.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CASE.with(Cell::get).is_none() {
                return default(info);
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((location, message)));
        }));
    });
}

pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The input of case `case`: its own generator, so any case can be replayed alone.
pub fn case_input(target: &Target, seed: u64, case: u64) -> Vec<u8> {
    let name_hash = target.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng(seed ^ name_hash ^ case.wrapping_mul(0xD605_BBB5_8C8A_BBD5));
    let mut input = mutate(&mut rng, &target.seeds, target.tokens);
    (target.fixup)(&mut input);
    input
}

pub fn findings_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings")
}

pub fn save_input(name: &str, case: u64, input: &[u8]) -> PathBuf {
    let path = findings_dir().join(format!("{name}-case{case}.bin"));
    std::fs::create_dir_all(findings_dir()).expect("findings folder");
    std::fs::write(&path, input).expect("save input");
    path
}

/// What the cases of one target did.
#[derive(Default)]
pub struct Tally {
    /// Panics by site.
    pub findings: BTreeMap<String, Finding>,
    /// The largest live heap of one case.
    pub peak: usize,
    pub accepted: u64,
}

/// Runs cases `cases` of `target` on this thread; counts executions in `done`.
pub fn run_cases(target: &Target, seed: u64, cases: Range<u64>, done: &AtomicU64) -> Tally {
    let scratch = Scratch::new();
    let mut tally = Tally::default();
    for case in cases {
        let input = case_input(target, seed, case);
        LIVE.with(|l| l.set(0));
        PEAK.with(|p| p.set(0));
        // A panic a reader caught itself must not be blamed on a later case.
        LAST_PANIC.with(|p| p.borrow_mut().take());
        CASE.with(|c| c.set(Some((target.name, case))));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (target.run)(&input, &scratch)
        }));
        CASE.with(|c| c.set(None));
        tally.peak = tally.peak.max(PEAK.with(Cell::get));
        if let Ok(accepted) = outcome {
            tally.accepted += u64::from(accepted);
        } else {
            let (location, message) = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_default();
            let finding = tally.findings.entry(location).or_insert_with(|| Finding {
                message,
                first_case: case,
                count: 0,
                saved: save_input(target.name, case, &input),
            });
            finding.count += 1;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

/// Fuzzes `target` and fails on any finding; prints executions, time and peak heap.
pub fn fuzz(target: Target) {
    install_panic_hook();
    let seed = env_u64("VLGUARD_FUZZ_SEED").unwrap_or(0x5EED_2024);
    let name = target.name;
    if let Some(case) = env_u64("VLGUARD_FUZZ_REPLAY") {
        let path = save_input(name, case, &case_input(&target, seed, case));
        println!("fuzz {name}: case {case} saved as {}", path.display());
        CASE.with(|c| c.set(Some((name, case))));
        let accepted = (target.run)(&std::fs::read(&path).unwrap(), &Scratch::new());
        CASE.with(|c| c.set(None));
        println!("fuzz {name}: case {case} ran, accepted: {accepted}");
        return;
    }
    let iterations = env_u64("VLGUARD_FUZZ_ITERS").unwrap_or(target.iterations);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // On a thread of its own, so that a hang fails the test instead of stalling it.
    let worker = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || run_cases(&target, seed, 0..iterations, &done))
    };
    let (mut last, mut since) = (0, Instant::now());
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let now = done.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        }
        assert!(
            since.elapsed() < HANG,
            "fuzz {name}: case {now} has run for {HANG:?}: a hang (seed {seed:#x}; replay it with VLGUARD_FUZZ_REPLAY={now})"
        );
    }
    let Tally {
        findings,
        peak,
        accepted,
    } = worker
        .join()
        .expect("the fuzz worker itself does not panic");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz {name}: {iterations} executions in {secs:.1} s ({:.0}/s), {accepted} accepted, seed {seed:#x}, peak heap of one case {:.1} MiB, {} finding(s)",
        iterations as f64 / secs,
        peak as f64 / (1 << 20) as f64,
        findings.len()
    );
    let _ = std::io::stdout().flush();
    let report: Vec<String> = findings
        .iter()
        .map(|(location, f)| {
            format!(
                "  panic at {location}: {} ({} case(s), first {}, input {})",
                f.message,
                f.count,
                f.first_case,
                f.saved.display()
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "fuzz {name}: {} panic site(s):\n{}",
        report.len(),
        report.join("\n")
    );
}

/// The largest live heap `f` reached on this thread.
pub fn peak_heap_of(f: impl FnOnce()) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    CASE.with(|c| c.set(Some(("regression", 0))));
    f();
    CASE.with(|c| c.set(None));
    PEAK.with(Cell::get)
}
