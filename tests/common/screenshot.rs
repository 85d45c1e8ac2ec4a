//! Headless Chromium for the browser tests (the leaderboard and the browse page): where it
//! is, and the screenshot it writes, decoded.

#![allow(dead_code)] // Each test file uses a different part of this helper.

use std::path::Path;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's chromium, or a panic saying how to install it; `what` names the page tested.
pub fn chromium(what: &str) -> &'static Path {
    let path = Path::new(CHROMIUM);
    assert!(
        path.exists(),
        "{CHROMIUM} not found: this test renders {what} in headless Chromium; \
         install it with `apt-get install chromium`"
    );
    path
}

/// Headless Chromium with the flags every browser test uses (no network, no GPU, fixed
/// scale) and its own profile folder; the caller adds window size, mode and URL.
pub fn headless(what: &str, profile: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(chromium(what));
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

pub struct Screenshot {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<[u8; 3]>,
}

impl Screenshot {
    pub fn at(&self, x: usize, y: usize) -> [u8; 3] {
        self.rgb[y * self.width + x]
    }
}

/// A PNG screenshot as RGB pixels (alpha dropped, 16-bit narrowed).
pub fn decode_png(path: &Path) -> Screenshot {
    let file = std::fs::File::open(path).expect("screenshot written");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let (width, height) = (info.width as usize, info.height as usize);
    let rgb = (0..width * height)
        .map(|i| {
            let p = (i / width) * info.line_size + (i % width) * channels;
            [buf[p], buf[p + 1], buf[p + 2]]
        })
        .collect();
    Screenshot { width, height, rgb }
}

/// Waits for a headless Chromium run, at most 90 s; `what` names the run in the panic.
pub fn wait_for(mut child: std::process::Child, what: &str) {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "chromium exited with {status}");
            return;
        }
        if start.elapsed() > std::time::Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish {what} in 90 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
