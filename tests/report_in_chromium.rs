//! `pgtunnel report` end to end: results from a real (short) bench run become one
//! self-contained HTML page, which a real headless Chromium renders with its SVG plots
//! in the DOM. Chromium is Debian's `chromium` package (scripts/test installs it); when
//! it is missing the rendering test says so loudly and skips, and the checks that need
//! no browser still run. Also: bad input files are refused with exit 64.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pgtunnel");
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `program` with `args`, killing it if it outlives `RUN_TIMEOUT`. Both output
/// pipes are drained while it runs, so a chatty program cannot block on a full pipe.
fn run(program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} ran longer than {RUN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One short bench run and its report, shared by the tests in this file.
struct Made {
    _dir: tempfile::TempDir,
    json: PathBuf,
    html: PathBuf,
}

fn made() -> &'static Made {
    static MADE: OnceLock<Made> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("run.json");
        let html = dir.path().join("report.html");
        let out = run(
            BIN,
            &[
                "bench",
                "--scenario",
                "handshake",
                "--scenario",
                "echo",
                "--size",
                "64",
                "--duration",
                "400ms",
                "--round",
                "200ms",
                "--warmup",
                "100ms",
                "--json",
                json.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "bench failed:\n{}", show(&out));
        let out = run(
            BIN,
            &[
                "report",
                json.to_str().unwrap(),
                "--out",
                html.to_str().unwrap(),
                "--p99-budget",
                "5ms",
            ],
        );
        assert!(out.status.success(), "report failed:\n{}", show(&out));
        Made {
            _dir: dir,
            json,
            html,
        }
    })
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium with everything that would reach the network or need a desktop turned off.
fn headless(browser: &Path, profile: &Path, extra: &[&str], page: &Path) -> Output {
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let url = format!("file://{}", page.display());
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        profile_arg.as_str(),
    ];
    args.extend_from_slice(extra);
    args.push(url.as_str());
    run(browser.to_str().unwrap(), &args)
}

#[test]
fn report_renders_in_headless_chromium_with_its_svg_plots() {
    let made = made();
    let Some(browser) = chromium() else {
        // scripts/test installs Chromium and sets this, so CI cannot pass by skipping.
        assert!(
            std::env::var_os("PGTUNNEL_REQUIRE_CHROMIUM").is_none(),
            "PGTUNNEL_REQUIRE_CHROMIUM is set but no chromium is on PATH"
        );
        eprintln!(
            "\n*** SKIPPED report_renders_in_headless_chromium_with_its_svg_plots: chromium is \
             not installed (apt-get install -y chromium); the report was NOT rendered ***\n"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = headless(&browser, profile.path(), &["--dump-dom"], &made.html);
    assert!(
        out.status.success(),
        "chromium --dump-dom failed:\n{}",
        show(&out)
    );
    let dom = String::from_utf8_lossy(&out.stdout);

    assert!(
        dom.contains("<h1>pgtunnel capacity report</h1>"),
        "title rendered"
    );
    let plots = dom.matches("class=\"plot percentile-plot\"").count();
    // handshake: setup + handshake metrics; echo 64 B: round trip.
    assert!(
        plots >= 3,
        "expected at least 3 percentile plots in the DOM, found {plots}"
    );
    let lines = dom.matches("<polyline").count();
    assert!(
        lines >= 7,
        "every route draws a curve; found {lines} polylines"
    );
    assert!(
        dom.contains("class=\"plot bar-chart\""),
        "throughput bars in the DOM"
    );
    assert!(
        dom.contains("Capacity per gateway core"),
        "capacity section rendered"
    );
    assert!(dom.contains("p99 budget 5 ms"), "budget line drawn");

    let shot = made.html.with_extension("png");
    let shot_arg = format!("--screenshot={}", shot.display());
    let out = headless(
        &browser,
        profile.path(),
        &[&shot_arg, "--window-size=1100,2400"],
        &made.html,
    );
    assert!(
        out.status.success(),
        "chromium --screenshot failed:\n{}",
        show(&out)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "screenshot is a PNG");
    assert!(
        png.len() > 30_000,
        "a rendered page with plots is more than a blank image ({} bytes)",
        png.len()
    );
}

#[test]
fn report_is_one_self_contained_file_with_machine_and_settings() {
    let made = made();
    let html = std::fs::read_to_string(&made.html).unwrap();
    for forbidden in [
        "<script", "<link", "<img", "src=", "href=", "@import", "url(",
    ] {
        assert!(
            !html.contains(forbidden),
            "the report must not load anything ({forbidden} found)"
        );
    }
    let without_namespace = html.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !without_namespace.contains("http://") && !without_namespace.contains("https://"),
        "no URLs besides the SVG namespace"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&made.json).unwrap()).unwrap();
    let kernel = json["machine"]["kernel"].as_str().unwrap();
    assert!(html.contains(kernel), "kernel {kernel:?} stated");
    assert!(
        html.contains(json["started_at"].as_str().unwrap()),
        "date stated"
    );
    assert!(
        html.contains("closed loop, 4 connections"),
        "settings stated"
    );
    assert!(
        html.contains("full mTLS handshakes/s"),
        "handshake capacity row"
    );
}

#[test]
fn report_refuses_input_that_is_not_bench_results() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.json");
    std::fs::write(&bogus, "{\"hello\": 1}").unwrap();
    let out_file = dir.path().join("r.html");
    for (input, needle) in [
        (bogus.clone(), "not a `pgtunnel bench --json` file"),
        (dir.path().join("missing.json"), "missing.json"),
    ] {
        let out = run(
            BIN,
            &[
                "report",
                input.to_str().unwrap(),
                "--out",
                out_file.to_str().unwrap(),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "bad input must exit 64:\n{}",
            show(&out)
        );
        assert!(
            stderr.contains(needle),
            "message should say {needle:?}:\n{stderr}"
        );
        assert!(!out_file.exists(), "nothing is written for bad input");
    }
}
