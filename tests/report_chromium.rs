//! index.html in a real browser: headless Chromium opens it without console messages, runs
//! nothing, fetches nothing, and shows every figure.
//!
//! Without Chromium the test is skipped with a printed reason, unless HSAP_REQUIRE_CHROMIUM=1
//! (scripts/test sets it, after installing Chromium), in which case it fails.

mod report_common;

use report_common::{decode_png, fixture_copy, rgb};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Beyond this Chromium is hung (it takes a few seconds); the test fails instead of waiting forever.
const HANG_GUARD: Duration = Duration::from_secs(180);
const WINDOW: (u32, u32) = (1400, 4000);

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HSAP_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let names = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `mode` flags; returns stdout and stderr.
fn run_chromium(browser: &Path, mode: &[String], url: &str) -> (String, String) {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    let err = tempfile::NamedTempFile::new().expect("stderr file");
    // No network here: without these flags Chromium waits on connections it cannot make.
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("stdout"))
        .stderr(err.reopen().expect("stderr"))
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {HANG_GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(out.path()).expect("read stdout");
    let stderr = std::fs::read_to_string(err.path()).expect("read stderr");
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    (stdout, stderr)
}

#[test]
fn index_html_opens_in_headless_chromium_and_shows_every_figure() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("HSAP_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "HSAP_REQUIRE_CHROMIUM=1 but no chromium on PATH (Debian: apt-get install chromium; or set HSAP_CHROMIUM)"
        );
        eprintln!("skipped: no chromium on PATH (Debian: apt-get install chromium; scripts/test installs it)");
        return;
    };
    let dir = fixture_copy(&[]);
    let files = hsap::report::render(dir.path()).expect("render");
    let url = format!("file://{}", files.index_html.display());
    let figures: Vec<String> = files
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "svg"))
        .map(|f| f.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    assert_eq!(figures.len(), 8);

    let (dom, log) = run_chromium(&browser, &["--dump-dom".to_string()], &url);
    // Any console message (a script error, a blocked fetch, a CSP violation) is a defect: the
    // page has no scripts and loads nothing.
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages:\n{}", console.join("\n"));
    for id in &figures {
        let at = dom
            .find(&format!("id=\"figure-{id}\""))
            .unwrap_or_else(|| panic!("the DOM has no figure {id}"));
        let end = dom[at..].find("</figure>").expect("figure closes") + at;
        let figure = &dom[at..end];
        assert!(figure.contains("<svg"), "figure {id} has no SVG in the DOM");
        assert!(figure.matches("<text").count() > 5, "figure {id} has no axis labels");
    }

    let shot_dir = tempfile::tempdir().expect("temp");
    let shot = shot_dir.path().join("shot.png");
    run_chromium(
        &browser,
        &[
            format!("--screenshot={}", shot.display()),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        ],
        &url,
    );
    let pixels = decode_png(&std::fs::read(&shot).expect("screenshot written"));
    assert_eq!((pixels.width, pixels.height), WINDOW);
    assert!(
        pixels.counts.len() > 200,
        "a blank screenshot: {} colours",
        pixels.counts.len()
    );
    let inked = pixels.not_white() as f64 / pixels.total() as f64;
    assert!(
        inked > 0.05,
        "only {:.1}% of the screenshot is not white",
        100.0 * inked
    );
    // The top of the page holds the headline table and the first figures: hsap's colour shows
    // (the browser may colour-manage, hence the tolerance).
    let hsap = rgb(hsap::report::palette::strategy_colour("hsap"));
    assert!(pixels.near(hsap, 6) > 200, "hsap's colour is not on screen");
}
