//! `pgtunnel gateway --check`: the commented example under examples/ passes as shipped
//! (next to certificates made by our CA), and each broken value is one line naming
//! the file, the field and the value, with exit code 64.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The shipped example, copied into a folder with the TLS files it names.
struct Example {
    _pki: Pki,
    dir: tempfile::TempDir,
    config: PathBuf,
    text: String,
}

fn example() -> Example {
    let shipped = repo_path("examples/gateway.toml");
    let text = fs::read_to_string(&shipped)
        .unwrap_or_else(|e| panic!("reading {}: {e}", shipped.display()));
    let mut table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", shipped.display()));
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");

    // Relative paths resolve against the config's folder: put our files there. An
    // absolute path cannot exist on every machine, so it is pointed at our file.
    let gateway = table
        .get_mut("gateway")
        .and_then(|g| g.as_table_mut())
        .expect("the example has a [gateway] table");
    let mut rewritten = false;
    for (field, source) in [
        ("cert", &pki.server.crt),
        ("key", &pki.server.key),
        ("client_ca", &pki.ca_crt),
    ] {
        let named = gateway
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("the example has no gateway.{field}"))
            .to_owned();
        let target = if Path::new(&named).is_absolute() {
            let target = dir.path().join(field);
            gateway.insert(field.into(), target.display().to_string().into());
            rewritten = true;
            target
        } else {
            dir.path().join(&named)
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).expect("folder for a TLS file");
        }
        fs::copy(source, &target).expect("copying a TLS file next to the example");
    }
    let text = if rewritten { table.to_string() } else { text };
    let config = dir.path().join("gateway.toml");
    fs::write(&config, &text).expect("writing the example copy");
    Example {
        _pki: pki,
        dir,
        config,
        text,
    }
}

fn check(config: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("gateway")
        .arg("--config")
        .arg(config)
        .arg("--check");
    let out = run_bounded(cmd, CLIENT_TIMEOUT);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// Writes the example with one value changed and checks the one-line complaint.
fn broken_value_is_named(path: &[&str], value: toml::Value, wanted: &[&str]) {
    let example = example();
    let mut table: toml::Table = example.text.parse().expect("example copy is TOML");
    // Walk to the table holding the field; the field itself is set (or added, for an
    // optional one the example leaves out).
    let (field, parents) = path.split_last().expect("a field path");
    let mut here = table
        .get_mut(parents[0])
        .unwrap_or_else(|| panic!("the example has no {}", parents[0]));
    for key in &parents[1..] {
        here = match key.parse::<usize>() {
            Ok(index) => here.get_mut(index),
            Err(_) => here.get_mut(*key),
        }
        .unwrap_or_else(|| panic!("the example has no {}", path.join(".")));
    }
    here.as_table_mut()
        .unwrap_or_else(|| panic!("{} is not a table in the example", parents.join(".")))
        .insert((*field).to_owned(), value);
    let broken = example.dir.path().join("broken.toml");
    fs::write(&broken, table.to_string()).expect("writing the broken config");

    let (code, stderr) = check(&broken);

    assert_eq!(
        code,
        Some(64),
        "broken {} not refused with 64:\n{stderr}",
        path.join(".")
    );
    assert_eq!(stderr.lines().count(), 1, "want one line, got:\n{stderr}");
    for needle in ["broken.toml"].iter().chain(wanted) {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}

#[test]
fn shipped_example_config_passes_check() {
    let example = example();

    let (code, stderr) = check(&example.config);

    assert_eq!(
        code,
        Some(0),
        "examples/gateway.toml failed --check:\n{stderr}"
    );
}

#[test]
fn listen_port_out_of_range_exits_64_naming_file_field_and_value() {
    broken_value_is_named(
        &["gateway", "listen"],
        "127.0.0.1:99999".into(),
        &["listen", "99999"],
    );
}

#[test]
fn unparsable_duration_exits_64_naming_file_field_and_value() {
    broken_value_is_named(
        &["gateway", "handshake_timeout"],
        "soon".into(),
        &["handshake_timeout", "soon"],
    );
}

#[test]
fn unparsable_upstream_exits_64_naming_file_field_and_value() {
    broken_value_is_named(
        &["service", "0", "upstream"],
        "db.example:notaport".into(),
        &["upstream", "notaport"],
    );
}

#[test]
fn missing_certificate_file_exits_64_naming_the_file() {
    broken_value_is_named(
        &["gateway", "cert"],
        "missing.crt".into(),
        &["cert", "missing.crt"],
    );
}

#[test]
fn unknown_ktls_mode_exits_64_naming_file_field_and_value() {
    broken_value_is_named(
        &["gateway", "ktls"],
        "sometimes".into(),
        &["ktls", "sometimes", "auto"],
    );
}

/// The data path is decided at load, so `--check` already says which pump sessions
/// will get, and `require` fails there, in one line, on a kernel without kTLS.
#[test]
fn ktls_require_is_refused_on_a_kernel_without_ktls_and_check_names_the_pump() {
    let kernel = pgtunnel::sys::ktls::probe();
    let example = example();
    for (mode, kernel_tls_wanted) in [("off", false), ("auto", kernel.is_ok())] {
        let config = example.dir.path().join(format!("{mode}.toml"));
        let text = example
            .text
            .replacen("[gateway]", &format!("[gateway]\nktls = {mode:?}"), 1);
        fs::write(&config, text).expect("writing the config");
        let mut cmd = Command::new(BIN);
        cmd.args(["gateway", "--check", "--config"]).arg(&config);
        let out = run_bounded(cmd, CLIENT_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let wanted = if kernel_tls_wanted {
            "kernel TLS + splice"
        } else {
            "userspace pump"
        };
        assert!(
            out.status.success() && stdout.contains(wanted),
            "ktls = {mode:?} on a kernel where the probe says {kernel:?}: want {wanted:?}:\n\
             {}\n{stdout}\n{stderr}",
            out.status
        );
    }

    let config = example.dir.path().join("require.toml");
    let text = example
        .text
        .replacen("[gateway]", "[gateway]\nktls = \"require\"", 1);
    fs::write(&config, text).expect("writing the config");
    let (code, stderr) = check(&config);
    match kernel {
        Ok(()) => assert_eq!(code, Some(0), "kTLS works here, yet:\n{stderr}"),
        Err(why) => {
            eprintln!("this kernel has no usable kTLS ({why}): checking that require fails");
            assert_eq!(
                code,
                Some(64),
                "require without kTLS was accepted:\n{stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "want one line, got:\n{stderr}");
            for needle in ["require.toml", "gateway.ktls", "require", &why] {
                assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
            }
        }
    }
}
