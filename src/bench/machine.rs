//! What machine a run happened on: kernel, CPU model, cores, memory, build and date.
//! Every published figure must carry these (docs/benchmarking.md), so the bench records
//! them itself instead of trusting whoever pastes the numbers. Read from `/proc`; a
//! value that cannot be read is "unknown" rather than an error.

use std::fs;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// `uname -srvm`: kernel name, release, version and architecture.
    pub kernel: String,
    pub cpu_model: String,
    /// CPUs this process may run on (taskset and cgroup cpusets respected).
    pub cores: usize,
    /// CPUs the kernel has online.
    pub online_cpus: usize,
    pub memory_mib: u64,
    pub hostname: String,
    /// "release" or "debug": a debug build of the load generator measures itself.
    pub build: String,
    /// "aws-lc-rs" or "ring".
    pub crypto: String,
    pub pgtunnel_version: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let read = |path: &str| {
            fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned())
        };
        let kernel = format!(
            "{} {} {} {}",
            read("/proc/sys/kernel/ostype"),
            read("/proc/sys/kernel/osrelease"),
            read("/proc/sys/kernel/version"),
            std::env::consts::ARCH
        );
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let online_cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        Machine {
            kernel,
            cpu_model: cpu_model(&cpuinfo),
            cores: crate::sys::affinity::allowed_cpus()
                .map(|c| c.len())
                .unwrap_or(online_cpus),
            online_cpus,
            memory_mib: mem_total_kib(&meminfo) / 1024,
            hostname: read("/proc/sys/kernel/hostname"),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
            crypto: if cfg!(feature = "aws-lc-rs") {
                "aws-lc-rs"
            } else {
                "ring"
            }
            .to_owned(),
            pgtunnel_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// The first `model name` in /proc/cpuinfo, with the CPU flags that matter for TLS
/// speed (AES-NI, VAES, AVX-512) appended when present.
fn cpu_model(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let model = field("model name").unwrap_or_else(|| "unknown".to_owned());
    let flags = field("flags").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let notable: Vec<&str> = ["aes", "vaes", "avx2", "avx512f", "sha_ni"]
        .into_iter()
        .filter(|f| flags.contains(f))
        .collect();
    if notable.is_empty() {
        model
    } else {
        format!("{model} ({})", notable.join(" "))
    }
}

fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Now, UTC, RFC 3339 with seconds.
pub fn now_rfc3339() -> String {
    crate::pki::rfc3339(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_names_the_model_and_tls_relevant_flags() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu aes avx2 vaes\n\
                    processor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(info), "AMD EPYC (aes vaes avx2)");
        assert_eq!(cpu_model(""), "unknown", "missing cpuinfo");
    }

    #[test]
    fn probe_reads_this_machine() {
        let m = Machine::probe();
        assert!(m.kernel.starts_with("Linux "), "kernel: {}", m.kernel);
        assert!(m.cores >= 1, "at least one usable core");
        assert!(m.memory_mib > 0, "memory read from /proc/meminfo");
    }
}
