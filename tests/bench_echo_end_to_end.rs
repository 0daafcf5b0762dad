//! `pgtunnel bench` end to end: the real binary starts its own PKI, gateway, agent and
//! upstream, runs the echo scenario through the tunnel and directly, and writes JSON
//! and `.hgrm` files a report can be made from. Also: its flags fail with exit 64 and
//! one line naming the flag.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use pgtunnel::bench::histogram::Latency;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pgtunnel");
/// A debug build on a shared 2-core machine takes about 15 s for this run.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the binary with `args`, killing it if it outlives `RUN_TIMEOUT`.
fn pgtunnel(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgtunnel");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while child.try_wait().expect("poll pgtunnel").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "pgtunnel {args:?} ran longer than {RUN_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn bench_echo_measures_tunnel_and_direct_and_writes_json_and_hgrm() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let hgrm = dir.path().join("hgrm");
    let out = pgtunnel(&[
        "bench",
        "--duration",
        "1s",
        "--scenario",
        "echo",
        "--json",
        json.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "bench failed:\n{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("== echo 64 B") && stdout.contains("gateway vs direct: p50"),
        "the table and the ratio line are printed:\n{stdout}"
    );

    let result: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap())
        .expect("--json writes valid JSON");
    assert_eq!(result["tool"], "pgtunnel bench", "tool name");
    assert!(
        result["machine"]["kernel"]
            .as_str()
            .unwrap()
            .starts_with("Linux"),
        "machine kernel recorded: {}",
        result["machine"]
    );
    assert!(
        result["machine"]["cores"].as_u64().unwrap() >= 1,
        "cores recorded"
    );
    assert_eq!(result["settings"]["duration_s"], 1.0, "settings recorded");

    let scenarios = result["scenarios"].as_array().unwrap();
    let variants: Vec<&str> = scenarios
        .iter()
        .map(|s| s["variant"].as_str().unwrap())
        .collect();
    assert_eq!(variants, ["64 B", "16 KiB"], "both default echo sizes ran");
    for scenario in scenarios {
        let routes = scenario["routes"].as_array().unwrap();
        let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["direct", "gateway", "agent+gateway"],
            "tunnel and direct routes measured in {}",
            scenario["variant"]
        );
        for route in routes {
            let name = route["name"].as_str().unwrap();
            let ops = route["ops"].as_u64().unwrap();
            assert!(ops > 0, "{name}: no round trips counted");
            assert_eq!(
                route["errors"], 0,
                "{name}: errors: {}",
                route["first_errors"]
            );
            let metric = &route["latency"][0];
            let encoded = Latency::decode(metric["hdr"].as_str().unwrap())
                .expect("the encoded histogram decodes");
            assert_eq!(
                encoded.count(),
                metric["summary"]["count"].as_u64().unwrap(),
                "{name}: the encoded histogram holds every sample"
            );
            assert!(
                metric["percentiles"].as_array().unwrap().len() > 5,
                "{name}: percentile curve present"
            );
            if name != "direct" {
                assert!(
                    route["cpu"]["gateway_us"].as_f64().unwrap() > 0.0,
                    "{name}: the gateway's CPU was measured"
                );
                assert!(
                    route["ratio"]["p50"].as_f64().unwrap() > 0.0,
                    "{name}: ratio"
                );
            }
        }
    }
    assert!(
        result["targets"]["tls"]
            .as_str()
            .unwrap_or("")
            .starts_with("TLS13_"),
        "negotiated TLS recorded: {}",
        result["targets"]
    );

    let files: Vec<String> = std::fs::read_dir(&hgrm)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 6, "one .hgrm per size and route: {files:?}");
    let sample = std::fs::read_to_string(hgrm_path(&hgrm, "echo-64_B-gateway-round_trip")).unwrap();
    assert!(
        sample.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"),
        "hgrm header:\n{sample}"
    );
    assert!(sample.contains("#[Mean    ="), "hgrm footer:\n{sample}");
}

fn hgrm_path(dir: &Path, stem: &str) -> std::path::PathBuf {
    dir.join(format!("{stem}.hgrm"))
}

#[test]
fn bench_flag_mistakes_exit_64_with_one_line_naming_the_flag() {
    for (args, needle) in [
        (&["bench", "--connections", "0"][..], "--connections 0"),
        (&["bench", "--duration", "soon"][..], "--duration \"soon\""),
        (&["bench", "--scenario", "tls"][..], "--scenario \"tls\""),
        (
            &["bench", "--size", "12 parsecs"][..],
            "--size \"12 parsecs\"",
        ),
        (&["bench", "--rate=-5"][..], "--rate -5"),
        (
            &["bench", "--gateway", "127.0.0.1:1"][..],
            "--gateway needs --cert",
        ),
        (
            &["bench", "--dsn", "user=a sslmode=disable"][..],
            "--dsn: sslmode",
        ),
    ] {
        let out = pgtunnel(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?} must exit 64:\n{}",
            show(&out)
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: message should name {needle:?}:\n{stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line:\n{stderr}"
        );
    }
}
