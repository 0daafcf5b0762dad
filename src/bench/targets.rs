//! What the bench measures: the routes each scenario can take, built either from the
//! self-hosted set-up (`selfhost`) or from `--gateway`, `--connect`, `--upstream`,
//! `--dsn` and `--pg-connect` pointing at an existing deployment, plus where to read
//! the targets' CPU. A scenario whose routes are missing gets a reason instead.
//!
//! The handshake baseline is always an in-process TLS terminator; against an existing
//! deployment it uses a throwaway PKI of its own (ECDSA P-256, like ours), so it
//! compares with the target only as far as the target's certificates are alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::cpu::ThreadGroup;
use super::load::Probes;
use super::net::Connector;
use super::pgwire::PgTarget;
use super::results::TargetsRecord;
use super::scenario::handshake::HandshakeRoutes;
use super::scenario::pg::PgRoute;
use super::scenario::{AGENT, DIRECT, GATEWAY, Route};
use super::selfhost::{self, BENCH_USER, ECHO_SERVICE, PG_SERVICE, Pki, SelfHosted};
use super::servers::Server;
use super::settings::{External, Settings, Target};
use crate::cli::UsageError;
use crate::tls;

pub const PATH_UPSTREAM: &str = "bench → upstream";
pub const PATH_GATEWAY: &str = "bench → gateway → upstream";
pub const PATH_AGENT: &str = "bench → agent → gateway → upstream";
pub const PATH_TERMINATOR: &str = "bench → TLS terminator (in-process rustls)";

/// The routes and probes of one run, and everything that must live as long.
pub struct Env {
    pub handshake: Result<HandshakeRoutes, String>,
    /// Echo and bulk: direct, gateway, agent+gateway (those available).
    pub stream: Result<Vec<Route>, String>,
    pub pg: Result<Vec<PgRoute>, String>,
    pub probes: Probes,
    pub record: TargetsRecord,
    pub hosted: Option<SelfHosted>,
    _servers: Vec<Server>,
    _scratch: Option<tempfile::TempDir>,
}

impl Env {
    pub fn prepare(settings: &Settings, with_pg: bool) -> anyhow::Result<Env> {
        let servers_cpu = ThreadGroup::new();
        match &settings.target {
            Target::SelfHosted { gateway_workers } => {
                self_hosted(*gateway_workers, with_pg, servers_cpu)
            }
            Target::External(ext) => external(ext, servers_cpu),
        }
    }

    /// Fails if a child process we started has died (its log says why).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(hosted) = &mut self.hosted {
            hosted.gateway.check_alive()?;
            for (_, agent) in &mut hosted.agents {
                agent.check_alive()?;
            }
        }
        Ok(())
    }
}

/// A TLS terminator in this process with `config`, and a route to it.
fn terminator(
    config: rustls::ServerConfig,
    client: Arc<ClientConfig>,
    name: &str,
    cpu: Arc<ThreadGroup>,
) -> anyhow::Result<(Server, Route)> {
    let server = Server::terminator(selfhost::loopback(0), Arc::new(config), cpu)
        .context("starting the in-process TLS terminator")?;
    let route = Route::new(
        name,
        PATH_TERMINATOR,
        Connector::Tls {
            addr: server.addr(),
            config: client,
            sni: sni(ECHO_SERVICE)?,
        },
    );
    Ok((server, route))
}

/// The direct TLS baseline: a terminator configured like the gateway (session tickets
/// included), reached once by a client that never resumes and once by one that does.
fn terminators(
    pki: &Pki,
    client: Arc<ClientConfig>,
    cpu: Arc<ThreadGroup>,
) -> anyhow::Result<(Vec<Server>, Route, Route)> {
    let (server, direct) = terminator(pki.server_config()?, client, DIRECT, cpu)?;
    let resumable = direct.clone();
    Ok((vec![server], direct, resumable))
}

fn self_hosted(workers: usize, with_pg: bool, cpu: Arc<ThreadGroup>) -> anyhow::Result<Env> {
    let (hosted, pg_error) = SelfHosted::start(workers, with_pg, cpu.clone())?;
    let pki = hosted.pki.clone();
    let client = Arc::new(client_tls(
        &pki.login_cert,
        &pki.login_key,
        &pki.ca,
        "127.0.0.1",
    )?);
    let (servers, direct, direct_resumable) = terminators(&pki, client.clone(), cpu.clone())?;

    let gateway = Route::new(
        GATEWAY,
        PATH_GATEWAY,
        Connector::Tls {
            addr: hosted.gateway.addr(),
            config: client,
            sni: sni(ECHO_SERVICE)?,
        },
    );
    let agent_addr = hosted
        .agent(ECHO_SERVICE)
        .map(|a| a.addr())
        .context("the echo agent did not start")?;
    let agent = Route::new(AGENT, PATH_AGENT, Connector::Tcp(agent_addr));
    let upstream = Route::new(
        DIRECT,
        PATH_UPSTREAM,
        Connector::Tcp(hosted.upstream.addr()),
    );

    let pg = match (&hosted.cluster, hosted.agent(PG_SERVICE)) {
        (Some(cluster), Some(pg_agent)) => {
            let tls = Arc::new(pg_tls(
                &pki.login_cert,
                &pki.login_key,
                &pki.ca,
                "127.0.0.1",
            )?);
            let target = |addr| PgTarget {
                connector: Connector::Tcp(addr),
                tls: tls.clone(),
                server_name: ServerName::from(std::net::IpAddr::from([127, 0, 0, 1])),
                user: BENCH_USER.to_owned(),
                database: "postgres".to_owned(),
            };
            Ok(vec![
                pg_route(DIRECT, "bench → PostgreSQL", target(cluster.addr())),
                pg_route(
                    AGENT,
                    "bench → agent → gateway → PostgreSQL",
                    target(pg_agent.addr()),
                ),
            ])
        }
        _ if !with_pg => Err("not requested".to_owned()),
        _ => Err(pg_error.unwrap_or_else(|| "PostgreSQL did not start".to_owned())),
    };

    let probes = Probes {
        gateway: Some(hosted.gateway.pid()),
        agents: hosted.agents.iter().map(|(_, a)| a.pid()).collect(),
        servers: Some(cpu),
    };
    let record = TargetsRecord {
        self_hosted: true,
        gateway: Some(format!(
            "{} (pgtunnel gateway, {} worker(s), started by the bench)",
            hosted.gateway.addr(),
            hosted.workers
        )),
        agent: Some(format!(
            "{agent_addr} (pgtunnel connect, started by the bench)"
        )),
        upstream: Some(format!(
            "{} (echo/sink/source server in the bench process)",
            hosted.upstream.addr()
        )),
        postgres: hosted
            .cluster
            .as_ref()
            .map(|c| format!("{} (throwaway cluster, {})", c.addr(), pg_version(c))),
        tls: None,
    };
    Ok(Env {
        handshake: Ok(HandshakeRoutes {
            direct: Some(direct),
            direct_resumable: Some(direct_resumable),
            gateway: Some(gateway.clone()),
            agent: Some(agent.clone()),
        }),
        stream: Ok(vec![upstream, gateway, agent]),
        pg,
        probes,
        record,
        hosted: Some(hosted),
        _servers: servers,
        _scratch: None,
    })
}

fn external(ext: &External, cpu: Arc<ThreadGroup>) -> anyhow::Result<Env> {
    // The handshake baseline needs certificates of its own.
    let scratch = tempfile::Builder::new()
        .prefix("pgtunnel-bench-")
        .tempdir()
        .context("creating a temporary folder")?;
    let pki = Pki::create(scratch.path())?;
    let own_client = Arc::new(client_tls(
        &pki.login_cert,
        &pki.login_key,
        &pki.ca,
        "127.0.0.1",
    )?);
    let (servers, direct, direct_resumable) = terminators(&pki, own_client, cpu.clone())?;

    let gateway = match ext.gateway {
        Some(addr) => {
            let (cert, key, ca) = credentials(ext, "--gateway")?;
            let config = client_tls(cert, key, ca, &ext.server_name)
                .map_err(|e| UsageError::new(format!("--gateway: {e:#}")))?;
            Some(Route::new(
                GATEWAY,
                PATH_GATEWAY,
                Connector::Tls {
                    addr,
                    config: Arc::new(config),
                    sni: sni(&ext.service)?,
                },
            ))
        }
        None => None,
    };
    let agent = ext
        .connect
        .map(|addr| Route::new(AGENT, PATH_AGENT, Connector::Tcp(addr)));
    let upstream = ext
        .upstream
        .map(|addr| Route::new(DIRECT, PATH_UPSTREAM, Connector::Tcp(addr)));

    let stream = match (&upstream, gateway.is_some() || agent.is_some()) {
        (None, _) => Err(
            "needs --upstream (the echo server behind the gateway) for the direct \
                          baseline"
                .to_owned(),
        ),
        (Some(_), false) => Err("needs --gateway or --connect to measure a tunnel".to_owned()),
        (Some(u), true) => Ok([Some(u.clone()), gateway.clone(), agent.clone()]
            .into_iter()
            .flatten()
            .collect()),
    };
    let handshake = if gateway.is_some() || agent.is_some() {
        Ok(HandshakeRoutes {
            direct: Some(direct),
            direct_resumable: Some(direct_resumable),
            gateway: gateway.clone(),
            agent: agent.clone(),
        })
    } else {
        Err("needs --gateway or --connect".to_owned())
    };
    let pg = external_pg(ext)?;

    let record = TargetsRecord {
        self_hosted: false,
        gateway: ext
            .gateway
            .map(|a| format!("{a} (service {:?})", ext.service)),
        agent: ext.connect.map(|a| a.to_string()),
        upstream: ext.upstream.map(|a| a.to_string()),
        postgres: ext.dsn.as_ref().map(|d| format!("{}:{}", d.host, d.port)),
        tls: None,
    };
    Ok(Env {
        handshake,
        stream,
        pg,
        probes: Probes {
            gateway: ext.gateway_pid,
            agents: ext.agent_pid.into_iter().collect(),
            servers: Some(cpu),
        },
        record,
        hosted: None,
        _servers: servers,
        _scratch: Some(scratch),
    })
}

fn external_pg(ext: &External) -> anyhow::Result<Result<Vec<PgRoute>, String>> {
    let (Some(dsn), Some(agent)) = (&ext.dsn, ext.pg_connect) else {
        return Ok(Err(
            "needs --dsn (PostgreSQL directly) and --pg-connect (an agent in front of it)".into(),
        ));
    };
    let pick = |own: &Option<PathBuf>, flag: &Option<PathBuf>, keyword: &str, option: &str| {
        own.clone().or_else(|| flag.clone()).ok_or_else(|| {
            UsageError::new(format!(
                "--dsn: {keyword} is missing (put it in the DSN or give {option})"
            ))
        })
    };
    let cert = pick(&dsn.sslcert, &ext.cert, "sslcert", "--cert")?;
    let key = pick(&dsn.sslkey, &ext.key, "sslkey", "--key")?;
    let ca = pick(&dsn.sslrootcert, &ext.ca, "sslrootcert", "--ca")?;
    let tls = Arc::new(
        pg_tls(&cert, &key, &ca, &dsn.host)
            .map_err(|e| UsageError::new(format!("--dsn: {e:#}")))?,
    );
    let server_name = ServerName::try_from(dsn.host.clone())
        .map_err(|_| UsageError::new(format!("--dsn: host {:?} is not a valid name", dsn.host)))?;
    let direct = dsn
        .addr()
        .map_err(|e| UsageError::new(format!("--dsn: {e}")))?;
    let target = |addr| PgTarget {
        connector: Connector::Tcp(addr),
        tls: tls.clone(),
        server_name: server_name.clone(),
        user: dsn.user.clone(),
        database: dsn.dbname.clone(),
    };
    Ok(Ok(vec![
        pg_route(DIRECT, "bench → PostgreSQL", target(direct)),
        pg_route(AGENT, "bench → agent → gateway → PostgreSQL", target(agent)),
    ]))
}

fn credentials<'a>(
    ext: &'a External,
    flag: &str,
) -> anyhow::Result<(&'a Path, &'a Path, &'a Path)> {
    match (&ext.cert, &ext.key, &ext.ca) {
        (Some(c), Some(k), Some(a)) => Ok((c, k, a)),
        _ => Err(UsageError::new(format!(
            "{flag} needs --cert, --key and --ca (the login certificate and the CA of the \
             gateway's certificate)"
        ))),
    }
}

fn pg_route(name: &str, path: &str, target: PgTarget) -> PgRoute {
    PgRoute {
        name: name.to_owned(),
        path: path.to_owned(),
        target,
    }
}

/// The bench's client side of the tunnel: exactly the agent's configuration.
fn client_tls(
    cert: &Path,
    key: &Path,
    ca: &Path,
    server_name: &str,
) -> anyhow::Result<ClientConfig> {
    Ok(tls::client_config(cert, key, ca, server_name)?)
}

/// TLS to PostgreSQL: the same login certificate, no ALPN (PostgreSQL before 17 has
/// none and 17 does not require it after an SSLRequest).
fn pg_tls(cert: &Path, key: &Path, ca: &Path, server_name: &str) -> anyhow::Result<ClientConfig> {
    let mut config = client_tls(cert, key, ca, server_name)?;
    config.alpn_protocols.clear();
    Ok(config)
}

fn sni(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| UsageError::new(format!("service name {name:?} cannot be sent as SNI")))
}

fn pg_version(cluster: &crate::pg::cluster::Cluster) -> String {
    cluster
        .admin_sql("SHOW server_version")
        .map(|v| format!("PostgreSQL {}", v.trim()))
        .unwrap_or_else(|_| "PostgreSQL".to_owned())
}

/// Socket address of a flag value, for the CLI.
pub fn resolve(flag: &str, value: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    value
        .to_socket_addrs()
        .map_err(|e| UsageError::new(format!("{flag} {value:?}: {e}")))?
        .next()
        .ok_or_else(|| UsageError::new(format!("{flag} {value:?}: no address")))
}
