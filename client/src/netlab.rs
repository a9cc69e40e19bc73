//! Several hosts on one machine: Linux network namespaces on a bridge, each link held
//! to a LAN's bandwidth by `tc`. For the tests and benchmarks that must cross a real
//! network: distinct addresses, a link slower than memory, a cable pulled out.
//!
//! A [`NetLab`] with three servers looks like this (every name carries this process's
//! id and a counter, so the labs of tests running in parallel, in one process or in
//! several, never meet):
//!
//! ```text
//!  poollab-PID-N-s0   poollab-PID-N-s1   poollab-PID-N-s2   poollab-PID-N-c
//!  eth0 10.77.0.10    eth0 10.77.0.11    eth0 10.77.0.12    eth0 10.77.0.2
//!       |                  |                  |                  |
//!  +----s0-----------------s1-------br0-------s2-----------------c----+
//!  |                        poollab-PID-N-sw (the switch)             |
//!  +------------------------------------------------------------------+
//! ```
//!
//! The bridge and the switch's ends of the veth pairs live in a namespace of their
//! own, so the machine's own network namespace gets no interface, no address and no
//! route: nothing in the lab can reach the host's network or another lab, and traffic
//! goes only between the lab's own addresses. Both ends of every link have a `tbf`
//! qdisc at the lab's rate, so each direction of each cable is limited as on switched
//! Ethernet, and the client's one link is shared by everything it ships. Where the
//! kernel has `netem`, a delay is added under each `tbf`; where it has not (this
//! project's machines), [`NetLab::delay`] says why there is none.
//!
//! Dropping the lab kills whatever still runs in its namespaces and deletes them,
//! which deletes their interfaces and qdiscs with them, also when a test panics. A lab
//! left behind by a process killed outright (SIGKILL) is removed by the next lab made
//! on the machine, once no process with its id runs.
//!
//! It needs root and iproute2 (`ip`, `tc`). Where either is missing,
//! [`NetLab::new`] returns [`LabError::Unavailable`], saying which, and the caller
//! skips ([`NetLab::new_or_skip`]); where both are there, anything that goes wrong
//! building the lab is a [`LabError::Failed`], a real failure.

use std::ffi::OsStr;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

/// The prefix of every namespace a lab creates; with the process id after it, it tells
/// which labs are left over from a process that is gone.
const PREFIX: &str = "poollab-";

/// The lab's subnet. Every lab has its own switch, so two labs using the same
/// addresses never see each other, and the host's routes never see either.
const SUBNET: &str = "10.77.0.0/24";

/// The client's address.
const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// The first server's address; the others follow.
const FIRST_SERVER: u8 = 10;

/// The most servers a lab has: their addresses must stay within the subnet.
const MAX_SERVERS: usize = 200;

/// What lab to build.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Server hosts (besides the client).
    pub servers: usize,
    /// Each link's rate in each direction, as `tc` reads it (`1gbit`, `100mbit`).
    pub rate: String,
    /// Latency added from one host to another, with `netem`, where the kernel has it.
    pub one_way_delay: Option<Duration>,
}

impl Default for LabConfig {
    /// Three servers on a 1 Gbit/s LAN with 0.1 ms from host to host (where `netem`
    /// exists).
    fn default() -> Self {
        LabConfig {
            servers: 3,
            rate: "1gbit".into(),
            one_way_delay: Some(Duration::from_micros(100)),
        }
    }
}

/// Why no lab was built.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// This machine cannot have network namespaces here: the message says what is
    /// missing ("needs root", "needs the `ip` command ..."). Tests and benchmarks skip.
    #[error("{0}")]
    Unavailable(String),
    /// Root and iproute2 are there, but building the lab failed: a real failure.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// One host of the lab: a network namespace with one interface, `eth0`, on the switch.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (for `ip netns exec`).
    pub namespace: String,
    /// Its address on the lab's subnet.
    pub address: Ipv4Addr,
    /// The switch's end of its cable: an interface in the switch's namespace.
    pub switch_port: String,
}

/// Network namespaces on a bridge with rate-limited links, removed when dropped. See
/// the [module documentation](self).
#[derive(Debug)]
pub struct NetLab {
    /// Removed when the lab is dropped.
    namespaces: Namespaces,
    switch: String,
    servers: Vec<Host>,
    client: Host,
    rate: String,
    delay: Result<Duration, String>,
    token: String,
}

impl NetLab {
    /// Builds a lab: the switch, `config.servers` server hosts and a client host, each
    /// link limited to `config.rate` each way.
    pub fn new(config: &LabConfig) -> Result<NetLab, LabError> {
        check_prerequisites()?;
        if config.servers == 0 || config.servers > MAX_SERVERS {
            return Err(LabError::Failed(anyhow::anyhow!(
                "a lab has 1 to {MAX_SERVERS} servers, not {}",
                config.servers
            )));
        }
        remove_abandoned_labs();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Whatever was made is removed if a later step fails.
        let mut namespaces = Namespaces(Vec::new());
        let switch = namespaces.add(format!("{name}-sw"))?;
        run(&["ip", "-n", &switch, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &switch, "link", "set", "br0", "up"])?;
        let mut links = Links {
            switch: &switch,
            rate: &config.rate,
            delay: match config.one_way_delay {
                None => Err("no delay was asked for".into()),
                Some(delay) => Ok(delay),
            },
        };
        let servers = (0..config.servers)
            .map(|i| {
                let address = Ipv4Addr::new(10, 77, 0, FIRST_SERVER + i as u8);
                links.plug(
                    &mut namespaces,
                    format!("{name}-s{i}"),
                    address,
                    format!("s{i}"),
                )
            })
            .collect::<anyhow::Result<Vec<Host>>>()?;
        let client = links.plug(
            &mut namespaces,
            format!("{name}-c"),
            CLIENT_ADDRESS,
            "c".into(),
        )?;
        let delay = links.delay;
        Ok(NetLab {
            namespaces,
            switch,
            servers,
            client,
            rate: config.rate.clone(),
            delay,
            token: pool_common::auth::random_token(),
        })
    }

    /// [`NetLab::new`] for a test or a benchmark named `what` that needs a lab:
    /// `Ok(None)` after printing `{what} skipped: {why}` where this machine cannot have
    /// one. The line goes straight to standard error, past a test harness's capture, so
    /// a skip shows in a plain `cargo test`. A lab that fails to build where it could
    /// is an error, never a skip.
    pub fn new_or_skip(what: &str, config: &LabConfig) -> anyhow::Result<Option<NetLab>> {
        match NetLab::new(config) {
            Ok(lab) => {
                let _ = writeln!(std::io::stderr(), "{what}: {}", lab.describe());
                Ok(Some(lab))
            }
            Err(LabError::Unavailable(why)) => {
                let _ = writeln!(std::io::stderr(), "{what} skipped: {why}");
                Ok(None)
            }
            Err(LabError::Failed(e)) => Err(e.context(format!("{what}: building the lab"))),
        }
    }

    /// The server hosts.
    pub fn servers(&self) -> &[Host] {
        &self.servers
    }

    /// The client host.
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// Each link's rate, as given to `tc` (e.g. `1gbit`).
    pub fn rate(&self) -> &str {
        &self.rate
    }

    /// The one-way delay from host to host, or why there is none (e.g. the kernel has
    /// no `netem`).
    pub fn delay(&self) -> Result<Duration, &str> {
        self.delay.as_ref().copied().map_err(String::as_str)
    }

    /// The token this lab's servers require: every program started with
    /// [`NetLab::command`] or [`NetLab::spawn_server`] gets it as `POOL_TOKEN`, since a
    /// server listening beyond loopback should have one.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// What the lab is, in one line for a report.
    pub fn describe(&self) -> String {
        let delay = match self.delay() {
            Ok(d) => format!("{} us one way", d.as_micros()),
            Err(why) => format!("no added delay ({why})"),
        };
        format!(
            "{} server namespaces and a client namespace on a bridge ({SUBNET}), every link {} each way (tc tbf), {delay}",
            self.servers.len(),
            self.rate
        )
    }

    /// A command that runs `program` in `host`'s namespace, with the lab's token in
    /// `POOL_TOKEN`.
    pub fn command(&self, host: &Host, program: impl AsRef<OsStr>) -> Command {
        let mut command = exec_in(&host.namespace, program);
        command.env("POOL_TOKEN", &self.token);
        command
    }

    /// Starts a pool server in server host `index`'s namespace, listening on its
    /// address with an OS-chosen port and requiring the lab's token, as
    /// [`spawn_server_in`](crate::servers::spawn_server_in) does (`exe serve` with
    /// `extra_args`, where `exe` is `pool-client` or `pool-bench`), and returns it with
    /// its `address:port` once it listens.
    pub fn spawn_server(
        &self,
        index: usize,
        exe: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<(Child, String)> {
        self.spawn_server_at(index, 0, exe, extra_args)
    }

    /// [`NetLab::spawn_server`] on port `port` (0: an OS-chosen one): each host has
    /// ports of its own, so servers on several hosts can share one, as a cluster's do.
    pub fn spawn_server_at(
        &self,
        index: usize,
        port: u16,
        exe: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<(Child, String)> {
        let host = self
            .servers
            .get(index)
            .with_context(|| format!("the lab has no server {index}"))?;
        crate::servers::spawn_server_in(
            Some(&host.namespace),
            (host.address, port).into(),
            exe,
            extra_args,
            &[("POOL_TOKEN", &self.token)],
        )
    }

    /// Gives the client host its own `/etc/hosts` (one `address name...` per line):
    /// `ip netns exec` puts `/etc/netns/NAMESPACE/hosts` over `/etc/hosts` for what
    /// runs there, so names resolve in the lab and nowhere else. Removed with the lab.
    pub fn set_client_hosts(&self, hosts: &str) -> anyhow::Result<()> {
        let dir = netns_etc(&self.client.namespace);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("hosts"), hosts))
            .with_context(|| format!("cannot write {}/hosts", dir.display()))
    }

    /// Every namespace of the lab: the switch, the servers, the client.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces.0
    }

    /// Pulls out `host`'s cable at the switch (`ip link set PORT down`): a partition,
    /// not a crash. The host's processes run on and its connections stay open, but no
    /// packet crosses until [`NetLab::mend`].
    pub fn cut(&self, host: &Host) -> anyhow::Result<()> {
        self.set_cable(host, "down")
    }

    /// Plugs `host`'s cable back in.
    pub fn mend(&self, host: &Host) -> anyhow::Result<()> {
        self.set_cable(host, "up")
    }

    /// Sets the switch's end of `host`'s cable `up` or `down`.
    fn set_cable(&self, host: &Host, state: &str) -> anyhow::Result<()> {
        let port = &host.switch_port;
        run(&["ip", "-n", &self.switch, "link", "set", port, state]).map(drop)
    }
}

/// A command that runs `program` in the network namespace `ip netns` calls
/// `namespace`. `ip netns exec` replaces itself with the program, so the child's
/// process id is the program's, and killing the child kills the program.
pub fn exec_in(namespace: &str, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", namespace]).arg(program);
    command
}

/// The namespaces a lab has made, removed (last made, first removed) when dropped,
/// also when building the lab fails half-way.
#[derive(Debug)]
struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates the namespace `name` with its loopback up, and returns its name.
    fn add(&mut self, name: String) -> anyhow::Result<String> {
        run(&["ip", "netns", "add", &name])?;
        self.0.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for namespace in self.0.iter().rev() {
            remove_namespace(namespace);
        }
    }
}

/// How each host is cabled to the switch while a lab is built.
struct Links<'a> {
    switch: &'a str,
    rate: &'a str,
    /// The one-way delay to add, or why none is (once `netem` has failed, it is not
    /// tried again: the kernel has it or it has not).
    delay: Result<Duration, String>,
}

impl Links<'_> {
    /// Adds a host: its namespace, a veth pair from its `eth0` to `port` on the
    /// switch's bridge, its address, and both ends limited to the lab's rate.
    fn plug(
        &mut self,
        namespaces: &mut Namespaces,
        name: String,
        address: Ipv4Addr,
        port: String,
    ) -> anyhow::Result<Host> {
        let namespace = namespaces.add(name)?;
        let sw = self.switch;
        run(&[
            "ip", "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &namespace,
        ])?;
        run(&["ip", "-n", sw, "link", "set", &port, "master", "br0"])?;
        run(&["ip", "-n", sw, "link", "set", &port, "up"])?;
        let cidr = format!("{address}/24");
        run(&["ip", "-n", &namespace, "addr", "add", &cidr, "dev", "eth0"])?;
        run(&["ip", "-n", &namespace, "link", "set", "eth0", "up"])?;
        for (ns, dev) in [(sw, port.as_str()), (namespace.as_str(), "eth0")] {
            limit_rate(ns, dev, self.rate)?;
            // Half the one-way delay on each end's egress: host to switch, switch to
            // host.
            if let Ok(delay) = self.delay {
                if let Err(why) = add_delay(ns, dev, delay / 2) {
                    self.delay = Err(why);
                }
            }
        }
        Ok(Host {
            namespace,
            address,
            switch_port: port,
        })
    }
}

/// Root, `ip` and `tc`: without them no lab can be built here, and that is a skip,
/// not a failure.
fn check_prerequisites() -> Result<(), LabError> {
    // /proc/self belongs to this process's effective user.
    match std::fs::metadata("/proc/self").map(|m| m.uid()) {
        Ok(0) => {}
        Ok(uid) => {
            return Err(LabError::Unavailable(format!(
                "needs root to create network namespaces (running as uid {uid})"
            )))
        }
        Err(e) => {
            return Err(LabError::Unavailable(format!(
                "needs root, and cannot tell this process's user from /proc/self: {e}"
            )))
        }
    }
    for program in ["ip", "tc"] {
        if Command::new(program).arg("-V").output().is_err() {
            return Err(LabError::Unavailable(format!(
                "needs the `{program}` command from Debian's iproute2 package \
                 (apt-get install iproute2)"
            )));
        }
    }
    Ok(())
}

/// Removes the namespaces of labs whose process is gone (killed before it could drop
/// them). Only this module's own names are touched.
fn remove_abandoned_labs() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(namespace = name, "removing a lab left by process {pid}");
            remove_namespace(name);
        }
    }
}

/// Kills what runs in `namespace` (the lab's own servers and clients, started by the
/// process that made it; never this process) and deletes it. The kernel frees the
/// namespace, with its interfaces and qdiscs, once its last process is gone.
/// Where `ip netns exec` finds the files it puts over `/etc` in `namespace`.
fn netns_etc(namespace: &str) -> PathBuf {
    Path::new("/etc/netns").join(namespace)
}

fn remove_namespace(namespace: &str) {
    let _ = std::fs::remove_dir_all(netns_etc(namespace));
    if let Ok(pids) = run(&["ip", "netns", "pids", namespace]) {
        let me = std::process::id().to_string();
        for pid in pids.split_whitespace().filter(|pid| *pid != me) {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    if let Err(e) = run(&["ip", "netns", "del", namespace]) {
        let _ = writeln!(
            std::io::stderr(),
            "warning: could not remove the network namespace {namespace}: {e:#}"
        );
    }
}

/// Limits `dev`'s egress to `rate` with a token bucket (`tbf`), handle `1:` so a delay
/// can go under it. The bucket holds 128 KiB, more than one 64 KiB segment the kernel
/// hands a veth at once, and at most 10 ms of queue.
fn limit_rate(namespace: &str, dev: &str, rate: &str) -> anyhow::Result<()> {
    run(&[
        "ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:",
        "tbf", "rate", rate, "burst", "128kb", "latency", "10ms",
    ])
    .map(drop)
}

/// Adds `delay` to `dev`'s egress with `netem` under its `tbf`; `Err` says why not
/// (most often: this kernel has no netem).
fn add_delay(namespace: &str, dev: &str, delay: Duration) -> Result<(), String> {
    let delay = format!("{}us", delay.as_micros().max(1));
    run(&[
        "ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", dev, "parent", "1:1",
        "handle", "10:", "netem", "delay", &delay,
    ])
    .map(drop)
    .map_err(|e| {
        let e = format!("{e:#}");
        if e.contains("qdisc kind is unknown") {
            "this kernel has no netem".to_string()
        } else {
            format!("netem failed: {e}")
        }
    })
}

/// Runs a command to its end; its standard output, or an error with the command line
/// and what it said on standard error.
fn run(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The namespaces of this process's labs.
    fn ours() -> Vec<String> {
        let mine = format!("{PREFIX}{}-", std::process::id());
        run(&["ip", "netns", "list"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| name.starts_with(&mine))
            .map(str::to_owned)
            .collect()
    }

    // One test, so no other lab of this process comes and goes while it counts.
    #[test]
    fn a_lab_is_built_as_described_and_leaves_nothing_behind() {
        const TEST: &str = "a_lab_is_built_as_described_and_leaves_nothing_behind";
        let config = LabConfig {
            servers: 2,
            ..LabConfig::default()
        };
        let Some(lab) = NetLab::new_or_skip(TEST, &config).unwrap() else {
            return;
        };
        assert_eq!(lab.namespaces().len(), 4, "{:?}", lab.namespaces());
        assert_eq!(ours().len(), 4);
        // Every link is limited at both ends.
        for host in lab.servers().iter().chain([lab.client()]) {
            for (namespace, dev) in [
                (lab.switch.as_str(), host.switch_port.as_str()),
                (host.namespace.as_str(), "eth0"),
            ] {
                let qdiscs = run(&[
                    "ip", "netns", "exec", namespace, "tc", "qdisc", "show", "dev", dev,
                ])
                .unwrap();
                assert!(
                    qdiscs.contains("tbf") && qdiscs.contains("rate 1Gbit"),
                    "{qdiscs}"
                );
            }
            let addresses = run(&[
                "ip",
                "-n",
                &host.namespace,
                "-brief",
                "addr",
                "show",
                "eth0",
            ])
            .unwrap();
            assert!(
                addresses.contains(&format!("{}/24", host.address)),
                "{addresses}"
            );
        }
        assert_eq!(lab.servers()[1].address, Ipv4Addr::new(10, 77, 0, 11));
        // The machine's own namespace got nothing: no interface named after a port.
        let links = run(&["ip", "-brief", "link", "show"]).unwrap();
        for host in lab.servers().iter().chain([lab.client()]) {
            assert!(
                !links
                    .lines()
                    .any(|l| l.split(['@', ' ']).next() == Some(&host.switch_port)),
                "{links}"
            );
        }

        // A test that panics still removes its lab.
        let panicked = std::panic::catch_unwind(move || {
            let _lab = lab;
            panic!("a failing test");
        });
        assert!(panicked.is_err());
        assert_eq!(ours(), Vec::<String>::new());

        // So does a lab that fails half-way, and that is a failure, not a skip: a bad
        // rate fails at the first link.
        let bad = NetLab::new(&LabConfig {
            rate: "notarate".into(),
            ..LabConfig::default()
        });
        match bad {
            Err(LabError::Failed(e)) => assert!(format!("{e:#}").contains("tbf"), "{e:#}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ours(), Vec::<String>::new());

        // A lab whose process was killed outright is removed by the next one.
        let dead_pid = (4_000_000u32..)
            .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .unwrap();
        let abandoned = format!("{PREFIX}{dead_pid}-0-sw");
        run(&["ip", "netns", "add", &abandoned]).unwrap();
        let lab = NetLab::new(&config).unwrap();
        let left = run(&["ip", "netns", "list"]).unwrap();
        assert!(!left.contains(&abandoned), "{left}");
        drop(lab);
        assert_eq!(ours(), Vec::<String>::new());
    }
}
