//! Headless Chromium for the browser tests (the leaderboard and the browse page): where it
//! is, the screenshot it writes, decoded, and a probe script's findings read back from the
//! document it dumps.

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

/// Runs headless Chromium on `html` at `window` with `mode` (`--screenshot=...` or
/// `--dump-dom`), stdout into a file in `dir` (a dumped page is larger than a pipe holds);
/// returns stdout. `what` names the page in panics.
pub fn run_chromium(
    what: &str,
    window: (usize, usize),
    html: &Path,
    mode: &str,
    dir: &Path,
) -> String {
    let stdout_path = dir.join("chromium.out");
    let stdout = std::fs::File::create(&stdout_path).expect("stdout file");
    let child = headless(what, &dir.join("profile"))
        .arg(format!("--window-size={},{}", window.0, window.1))
        .arg(mode)
        .arg(format!("file://{}", html.display()))
        .stdout(std::process::Stdio::from(stdout))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium starts");
    wait_for(child, "its run");
    let bytes = std::fs::read(&stdout_path).expect("chromium output");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs `probe` (a script body ending in a value) after the page's own scripts and returns
/// that value, read back from the document Chromium dumps: the probe's script is appended
/// to a copy of the page (`dir/probe.html`) and writes its value as JSON into the document.
pub fn probe(
    what: &str,
    window: (usize, usize),
    html: &str,
    probe: &str,
    dir: &Path,
) -> serde_json::Value {
    let script = format!(
        "<script>\n(function () {{\nconst out = document.createElement('pre');\n\
         out.id = 'browse-probe';\nout.textContent = JSON.stringify((function () {{\n{probe}\n}})());\n\
         document.body.append(out);\n}})();\n</script>\n</body>"
    );
    let (head, tail) = html.rsplit_once("</body>").expect("page ends with </body>");
    let path = dir.join("probe.html");
    std::fs::write(&path, format!("{head}{script}{tail}")).expect("write probe page");
    let dom = run_chromium(what, window, &path, "--dump-dom", dir);
    let start = dom
        .find("<pre id=\"browse-probe\">")
        .unwrap_or_else(|| panic!("the probe wrote nothing; did the page's script fail?"))
        + "<pre id=\"browse-probe\">".len();
    let end = start + dom[start..].find("</pre>").expect("probe end");
    // The DOM serializer escapes &, < and > in text.
    let text = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("probe output {text:?}: {e}"))
}
