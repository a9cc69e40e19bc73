//! The job file (`job.toml`): its schema, and validation with errors that name the file,
//! line and column to fix.
//!
//! ```toml
//! parts = 6                        # how many parts to split the job into
//! servers = ["10.0.0.5:7000"]      # or servers_file = "servers.txt", "slurm", or local = 3
//! seed = 42                        # optional: makes the choice of servers reproducible
//! schedule = "dynamic"             # or "static": every part dealt up front
//! placement = "least-loaded"       # or "random", "shuffle", "round-robin", "two-choices"
//!
//! [job]
//! kind = "loop"                    # or any of jobs::KIND_NAMES
//! iterations = 3_000_000_000
//! ```
//!
//! The README's job file reference lists every key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{IntoDeserializer, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::jobs::{Job, JobSpec, KIND_NAMES};
use crate::sshhosts::{read_hosts_file, SshHost};
use crate::tls::{read_certificates, Fingerprint, TlsTrust};

/// The most servers `local = N` may start.
pub const MAX_LOCAL_SERVERS: u64 = 64;

/// A validated job file.
#[derive(Debug, Clone)]
pub struct JobFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Server addresses (`host:port`, `N/host:port` or `dns:name:port`) from `servers`,
    /// `servers_file` or Slurm's node list, in their order.
    pub servers: Vec<String>,
    /// `servers_file`, resolved against the job file's folder: read again when it
    /// changes during a job, so servers can join and leave.
    pub servers_file: Option<PathBuf>,
    /// `servers = "discover"`: the servers announced on the local network, the first
    /// ones being those that answer within this window (`discover_window`).
    pub discover: Option<Duration>,
    /// `local = N`: start N servers on this machine for the run.
    pub local_servers: Option<usize>,
    /// `ssh_hosts`: servers on hosts reached with ssh, started for the run
    /// (`launch = "ssh"`) or by `pool-client up`.
    pub ssh: Option<SshServers>,
    /// Number of parts.
    pub parts: usize,
    /// Seed for the random choice of servers; `None` picks a fresh one each run.
    pub seed: Option<u64>,
    /// When parts are handed to servers.
    pub schedule: Schedule,
    /// Which server a part goes to.
    pub placement: Placement,
    /// Whether a straggling part gets a copy on an idle server (`speculate`).
    pub speculate: bool,
    /// What to compute.
    pub job: JobSpec,
    /// How the client talks to servers and copes with their failures.
    pub client: ClientSettings,
    /// Where `parts` was written, to point at it when it proves too large.
    parts_location: Location,
}

/// The servers of a job file's `ssh_hosts`.
#[derive(Debug, Clone, PartialEq)]
pub struct SshServers {
    /// `ssh_hosts`, resolved against the job file's folder.
    pub hosts_file: PathBuf,
    /// Its hosts, read with the job file when `launch = "ssh"` will start servers there.
    pub hosts: Vec<SshHost>,
    /// `launch = "ssh"`: start the servers before the job and stop them after it.
    /// Without it, the servers are those `pool-client up` started on these hosts.
    pub launch: bool,
    /// `ssh_config`, given to ssh as `-F FILE` (resolved against the job file's folder).
    pub config: Option<PathBuf>,
    /// `server_binary`: the program copied to the hosts that lack it (resolved against
    /// the job file's folder); `None` for `pool-server` beside `pool-client`.
    pub server_binary: Option<PathBuf>,
    /// The port the servers listen on (`port`, default [`DEFAULT_PORT`]).
    pub port: u16,
}

/// What `launch` may say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Launch {
    /// Start the servers with ssh on `ssh_hosts`' hosts.
    Ssh,
}

/// When the client hands parts to servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// A part goes out as soon as a server has a free slot (its workers plus a small
    /// read-ahead), so fast servers take more parts than slow ones. The default.
    #[default]
    Dynamic,
    /// Every part is dealt at the start, as in the original paper: the job then waits
    /// for the slowest server.
    Static,
}

impl Schedule {
    /// The schedule's name in a job file.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Dynamic => "dynamic",
            Schedule::Static => "static",
        }
    }
}

/// Which server the client gives a part to. Under [`Schedule::Dynamic`] the choice is
/// among the servers with a free slot; under [`Schedule::Static`] it deals every part
/// at the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// The server expected to finish the part first, from the parts in flight there,
    /// the speed it showed on this job's parts, and what it reports about its load.
    /// The default.
    #[default]
    LeastLoaded,
    /// The less loaded (as for `least-loaded`) of two servers drawn at random: nearly
    /// as good, and it needs no global view.
    TwoChoices,
    /// Servers in a random order, taken in turn: random, but no server gets more than
    /// one part more than another when all are equally fast.
    Shuffle,
    /// Servers in the order of the list, taken in turn.
    RoundRobin,
    /// Each part goes to a server drawn independently at random, as in the original
    /// paper: simple, but several parts may land on one server while another idles.
    Random,
}

impl Placement {
    /// The policy's name in a job file.
    pub fn name(self) -> &'static str {
        match self {
            Placement::LeastLoaded => "least-loaded",
            Placement::TwoChoices => "two-choices",
            Placement::Shuffle => "shuffle",
            Placement::RoundRobin => "round-robin",
            Placement::Random => "random",
        }
    }
}

/// One entry of a server list: an address, and optionally how many parts it may hold
/// at once, written GNU parallel's way (`4/host:port`). `dns:name:port` stands for every
/// address the name resolves to (as a Kubernetes headless Service's name does), looked
/// up again during a job so that servers can join and leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// `host:port` (`name:port` for a `dns:` entry).
    pub address: String,
    /// The slots given in the list, overriding the workers the server reports.
    pub slots: Option<u32>,
    /// Written `dns:name:port`: the name stands for all of its addresses.
    pub every_address: bool,
}

/// What marks an entry that stands for every address of a name.
pub const DNS_PREFIX: &str = "dns:";

impl ServerEntry {
    /// Reads `host:port`, `N/host:port` or `[N/]dns:name:port`, saying what to fix if
    /// it is none of them.
    pub fn parse(entry: &str) -> Result<ServerEntry, String> {
        let (slots, address) = match entry.split_once('/') {
            None => (None, entry),
            Some((slots, address)) => match slots.trim().parse::<u32>() {
                Ok(n) if n >= 1 => (Some(n), address),
                _ => {
                    return Err(format!(
                        "{entry:?}: the slots before `/` must be a whole number of at least 1, as in \"4/host:7000\""
                    ))
                }
            },
        };
        let (every_address, address) = match address.strip_prefix(DNS_PREFIX) {
            Some(name) => (true, name),
            None => (false, address),
        };
        check_address(address)?;
        Ok(ServerEntry {
            address: address.to_string(),
            slots,
            every_address,
        })
    }

    /// The entry for one server at `address`, with this entry's slots.
    pub fn at(&self, address: String) -> ServerEntry {
        ServerEntry {
            address,
            slots: self.slots,
            every_address: false,
        }
    }
}

/// One entry per server address: a server listed twice (by hand, or by two forms that
/// resolve to it) would otherwise get two connections and twice its share of parts.
/// The entries of one address become one, where it was first listed; its slots are the
/// sum of theirs when each gives slots, else the workers it reports. Returns a warning
/// per address listed more than once.
pub fn merge_duplicate_servers(entries: Vec<ServerEntry>) -> (Vec<ServerEntry>, Vec<String>) {
    let mut grouped: Vec<(ServerEntry, Vec<Option<u32>>)> = Vec::new();
    for entry in entries {
        match grouped.iter_mut().find(|(first, _)| {
            first.every_address == entry.every_address
                && first.address.eq_ignore_ascii_case(&entry.address)
        }) {
            Some((_, slots)) => slots.push(entry.slots),
            None => {
                let slots = vec![entry.slots];
                grouped.push((entry, slots));
            }
        }
    }
    let mut warnings = Vec::new();
    let entries = grouped
        .into_iter()
        .map(|(first, slots)| {
            let summed = slots
                .iter()
                .try_fold(0u32, |sum, n| n.map(|n| sum.saturating_add(n)));
            if slots.len() > 1 {
                let how = match summed {
                    Some(n) => format!("with {n} slots, the sum of its entries'"),
                    None => "with the workers it reports".to_string(),
                };
                warnings.push(format!(
                    "server {} is listed {} times: used once, {how} \
                     (write N/host:port to give a server N slots)",
                    first.address,
                    slots.len()
                ));
            }
            ServerEntry {
                slots: summed,
                ..first
            }
        })
        .collect();
    (entries, warnings)
}

/// How the client talks to servers and copes with their failures.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// Time allowed for a TCP connection to be made (`connect_timeout`, seconds).
    pub connect_timeout: Duration,
    /// Time allowed for a server to answer the handshake (`handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Time allowed for a part, from sending it to its result (`part_timeout`); `None`
    /// derives it from the part's size and the work queued before it.
    pub part_timeout: Option<Duration>,
    /// Servers a part is tried on before it counts as failed (`max_attempts`).
    pub max_attempts: u32,
    /// What to do with parts no server could compute (`fallback`).
    pub fallback: Fallback,
    /// The shared secret for servers started with `--token` (`token`).
    pub token: Option<String>,
    /// How long a server holding parts may leave a status request unanswered before
    /// its parts get copies elsewhere (`liveness_timeout`).
    pub liveness_timeout: Duration,
    /// With `tls = true`, whom the client trusts to be the servers (`tls_ca` or
    /// `tls_fingerprint`); `None` talks plain TCP.
    pub tls: Option<TlsTrust>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            part_timeout: None,
            max_attempts: 3,
            fallback: Fallback::None,
            token: None,
            liveness_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// What the client does with parts that every attempt failed to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// The job fails, naming each server and what happened to it. The default.
    #[default]
    None,
    /// The client computes them itself, and says so.
    Local,
}

/// A line and column in a file, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// A job file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct JobFileError {
    /// The file at fault (the job file, or a file it names).
    pub path: String,
    /// Where in that file, when known.
    pub location: Option<Location>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for JobFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(at) => write!(
                f,
                "{}:{}:{}: {}",
                self.path, at.line, at.column, self.message
            ),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobFile {
    parts: Spanned<u64>,
    servers: Option<Spanned<ServersKey>>,
    servers_file: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    discover_window: Option<Spanned<f64>>,
    local: Option<Spanned<u64>>,
    launch: Option<Spanned<Launch>>,
    ssh_hosts: Option<Spanned<String>>,
    ssh_config: Option<Spanned<String>>,
    server_binary: Option<Spanned<String>>,
    seed: Option<u64>,
    #[serde(default)]
    schedule: Schedule,
    #[serde(default)]
    placement: Placement,
    speculate: Option<Spanned<bool>>,
    connect_timeout: Option<Spanned<f64>>,
    handshake_timeout: Option<Spanned<f64>>,
    part_timeout: Option<Spanned<f64>>,
    liveness_timeout: Option<Spanned<f64>>,
    max_attempts: Option<Spanned<u32>>,
    #[serde(default)]
    fallback: Fallback,
    token: Option<String>,
    tls: Option<Spanned<bool>>,
    tls_ca: Option<Spanned<String>>,
    tls_fingerprint: Option<Spanned<OneOrMore>>,
    /// Only its `kind` and its place here; the kind reads its own keys (see
    /// [`parse_job`]).
    job: Spanned<RawJobKind>,
}

/// The `servers` key: a list of addresses, or a word saying where to find them.
enum ServersKey {
    List(Vec<Spanned<String>>),
    Word(String),
}

impl<'de> Deserialize<'de> for ServersKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = ServersKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SERVERS_FORMS)
            }
            fn visit_str<E>(self, word: &str) -> Result<ServersKey, E> {
                Ok(ServersKey::Word(word.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut list: A) -> Result<ServersKey, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = list.next_element()? {
                    entries.push(entry);
                }
                Ok(ServersKey::List(entries))
            }
        }
        deserializer.deserialize_any(Either)
    }
}

/// What `servers` may be, for messages.
const SERVERS_FORMS: &str =
    "a list of \"host:port\" addresses (or \"dns:name:port\"), \"slurm\" or \"discover\"";

/// `servers = "discover"`, or `--servers discover`: the servers announced on the local
/// network.
pub const DISCOVER: &str = "discover";

/// How long, by default, a client looks for servers on the local network before the
/// job starts (`discover_window`).
pub const DEFAULT_DISCOVER_WINDOW: Duration = Duration::from_secs(2);

/// The port servers listen on where the list gives none (Slurm's node names): the
/// server's own default.
pub const DEFAULT_PORT: u16 = 7000;

/// The servers of the Slurm allocation this runs in: every node of
/// `SLURM_JOB_NODELIST` (or the older `SLURM_NODELIST`), at `port`.
pub fn slurm_servers(port: u16) -> Result<Vec<String>, String> {
    let nodelist = std::env::var("SLURM_JOB_NODELIST")
        .or_else(|_| std::env::var("SLURM_NODELIST"))
        .map_err(|_| {
            "servers = \"slurm\" needs SLURM_JOB_NODELIST, which Slurm sets inside an allocation: \
             run under sbatch, salloc or srun"
                .to_string()
        })?;
    nodes_at_port(&nodelist, port)
}

/// A list given on the command line (`--servers`): addresses (`[N/]host:port` or
/// `[N/]dns:name:port`), each checked; `slurm` (or `slurm:PORT`) alone for the nodes
/// of the Slurm allocation this runs in; or [`DISCOVER`] alone, kept as it is.
pub fn command_line_servers(list: &[String]) -> Result<Vec<String>, String> {
    if let [word] = list {
        if word == DISCOVER {
            return Ok(list.to_vec());
        }
        if let Some(port) = word.strip_prefix("slurm") {
            let port = match port.strip_prefix(':') {
                None if port.is_empty() => DEFAULT_PORT,
                Some(port) => port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("{word:?}: the port must be between 1 and 65535"))?,
                None => return Err(format!("{word:?}: write slurm or slurm:PORT")),
            };
            return slurm_servers(port);
        }
    }
    for entry in list {
        ServerEntry::parse(entry)?;
    }
    Ok(list.to_vec())
}

/// Each host of a Slurm host-list expression, at `port`.
fn nodes_at_port(nodelist: &str, port: u16) -> Result<Vec<String>, String> {
    let hosts = crate::hostlist::expand(nodelist)
        .map_err(|problem| format!("SLURM_JOB_NODELIST: {problem}"))?;
    Ok(hosts
        .into_iter()
        .map(|host| format!("{host}:{port}"))
        .collect())
}

/// The `[job]` table's `kind`, the other keys left to the kind.
#[derive(Deserialize)]
struct RawJobKind {
    kind: Spanned<String>,
}

/// Reads and validates a job file. Files it names (servers file, CSV, .npy) are resolved
/// against the job file's folder; the servers file is read now, a matrix file later by
/// [`JobFile::load_job`].
pub fn read(path: &Path) -> Result<JobFile, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| JobFileError {
        path: path.display().to_string(),
        location: None,
        message: format!("cannot read the job file: {e}"),
    })?;
    parse(&text, path)
}

/// Validates a job file's text; `path` is used in messages and to resolve file names.
pub fn parse(text: &str, path: &Path) -> Result<JobFile, JobFileError> {
    let error_at = |span: Option<Range<usize>>, message: String| JobFileError {
        path: path.display().to_string(),
        location: span.map(|s| location_of(text, s.start)),
        message,
    };
    let toml_error = |e: toml::de::Error| error_at(e.span(), plain_types(e.message().trim()));
    // Parsed once, keeping every value's place: read here for the common keys, and by
    // the job's kind for its own (see `parse_job`).
    let document = toml::de::DeTable::parse(text).map_err(toml_error)?;
    let raw = RawJobFile::deserialize(document.clone().into_deserializer()).map_err(toml_error)?;
    let base = path.parent().unwrap_or(Path::new(""));

    let parts = *raw.parts.get_ref();
    if parts == 0 {
        return Err(error_at(
            Some(raw.parts.span()),
            "parts must be at least 1".into(),
        ));
    }
    let parts_usize = usize::try_from(parts).map_err(|_| {
        error_at(
            Some(raw.parts.span()),
            format!("parts = {parts} is more than this machine can count"),
        )
    })?;

    if let (Some(_), Some(file)) = (&raw.servers, &raw.servers_file) {
        return Err(error_at(
            Some(file.span()),
            "give either servers or servers_file, not both".into(),
        ));
    }
    let port = raw.port.as_ref().map(|p| (*p.get_ref(), p.span()));
    if let Some((0, span)) = port {
        return Err(error_at(
            Some(span),
            "port must be between 1 and 65535".into(),
        ));
    }
    let mut servers = Vec::new();
    let mut takes_port = false;
    let mut discover = None;
    match raw.servers.as_ref().map(|s| (s.get_ref(), s.span())) {
        None => {}
        Some((ServersKey::List(list), _)) => {
            for server in list {
                ServerEntry::parse(server.get_ref())
                    .map_err(|m| error_at(Some(server.span()), m))?;
                servers.push(server.get_ref().clone());
            }
        }
        Some((ServersKey::Word(word), span)) if word == "slurm" => {
            takes_port = true;
            servers = slurm_servers(port.as_ref().map_or(DEFAULT_PORT, |(p, _)| *p))
                .map_err(|m| error_at(Some(span), m))?;
        }
        Some((ServersKey::Word(word), _)) if word == DISCOVER => {
            discover = Some(DEFAULT_DISCOVER_WINDOW);
        }
        Some((ServersKey::Word(word), span)) => {
            return Err(error_at(
                Some(span),
                format!(
                    "servers = {word:?} is not one of the forms servers takes: {SERVERS_FORMS}"
                ),
            ))
        }
    }
    if raw.ssh_hosts.is_some() {
        takes_port = true;
    }
    if let (Some((_, span)), false) = (&port, takes_port) {
        return Err(error_at(
            Some(span.clone()),
            "port is for servers = \"slurm\" or ssh_hosts (host names without a port); \
             give each address in servers as host:port"
                .into(),
        ));
    }
    if let Some(window) = &raw.discover_window {
        let seconds = *window.get_ref();
        let valid = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|w| !w.is_zero());
        match (valid, discover) {
            (Some(window), Some(_)) => discover = Some(window),
            (None, _) => {
                return Err(error_at(
                    Some(window.span()),
                    "discover_window must be a positive number of seconds".into(),
                ))
            }
            (Some(_), None) => {
                return Err(error_at(
                    Some(window.span()),
                    "discover_window is for servers = \"discover\"".into(),
                ))
            }
        }
    }
    let servers_file = raw.servers_file.as_ref().map(|f| base.join(f.get_ref()));
    if let Some(file) = &servers_file {
        servers = read_servers_file(file)?;
    }
    let local_servers = match &raw.local {
        None => None,
        Some(n) if (1..=MAX_LOCAL_SERVERS).contains(n.get_ref()) => Some(*n.get_ref() as usize),
        Some(n) => {
            return Err(error_at(
                Some(n.span()),
                format!("local must be between 1 and {MAX_LOCAL_SERVERS} (servers to start on this machine)"),
            ))
        }
    };

    let ssh = ssh_servers(&raw, base, port.map_or(DEFAULT_PORT, |(p, _)| p), &error_at)?;

    let seconds =
        |value: &Option<Spanned<f64>>, key: &str| -> Result<Option<Duration>, JobFileError> {
            let Some(value) = value else { return Ok(None) };
            Duration::try_from_secs_f64(*value.get_ref())
                .ok()
                .filter(|d| !d.is_zero())
                .map(Some)
                .ok_or_else(|| {
                    error_at(
                        Some(value.span()),
                        format!("{key} must be a positive number of seconds"),
                    )
                })
        };
    let defaults = ClientSettings::default();
    let client = ClientSettings {
        connect_timeout: seconds(&raw.connect_timeout, "connect_timeout")?
            .unwrap_or(defaults.connect_timeout),
        handshake_timeout: seconds(&raw.handshake_timeout, "handshake_timeout")?
            .unwrap_or(defaults.handshake_timeout),
        part_timeout: seconds(&raw.part_timeout, "part_timeout")?,
        max_attempts: match &raw.max_attempts {
            None => defaults.max_attempts,
            Some(n) if *n.get_ref() >= 1 => *n.get_ref(),
            Some(n) => {
                return Err(error_at(
                    Some(n.span()),
                    "max_attempts must be at least 1".into(),
                ))
            }
        },
        fallback: raw.fallback,
        token: raw.token.clone().filter(|t| !t.is_empty()),
        liveness_timeout: seconds(&raw.liveness_timeout, "liveness_timeout")?
            .unwrap_or(defaults.liveness_timeout),
        tls: tls_trust(&raw, base, &error_at)?,
    };
    let speculate = match (&raw.speculate, raw.schedule) {
        (None, schedule) => schedule == Schedule::Dynamic,
        (Some(on), Schedule::Static) if *on.get_ref() => {
            return Err(error_at(
                Some(on.span()),
                "speculate = true needs schedule = \"dynamic\": a static deal sends no copies"
                    .into(),
            ))
        }
        (Some(on), _) => *on.get_ref(),
    };

    let job = parse_job(document.into_inner(), &raw.job, &error_at)?;
    if let Some(units) = job.planned_units() {
        if parts > units {
            return Err(error_at(
                Some(raw.parts.span()),
                format!(
                    "parts = {parts} is more than the {units} {} to split",
                    job.unit()
                ),
            ));
        }
    }

    Ok(JobFile {
        path: path.to_path_buf(),
        servers,
        servers_file,
        discover,
        local_servers,
        ssh,
        parts: parts_usize,
        seed: raw.seed,
        schedule: raw.schedule,
        placement: raw.placement,
        speculate,
        job,
        client,
        parts_location: location_of(text, raw.parts.span().start),
    })
}

/// The `ssh_hosts` keys: `launch`, `ssh_config` and `server_binary` go with
/// `ssh_hosts`, which excludes the other ways of naming servers and TLS (servers started
/// over ssh take plain TCP and a token drawn for them). With `launch = "ssh"` the hosts
/// file is read now, so its mistakes show before any server starts.
fn ssh_servers(
    raw: &RawJobFile,
    base: &Path,
    port: u16,
    error_at: &dyn Fn(Option<Range<usize>>, String) -> JobFileError,
) -> Result<Option<SshServers>, JobFileError> {
    let Some(hosts_file) = &raw.ssh_hosts else {
        let stray = [
            ("launch = \"ssh\"", raw.launch.as_ref().map(Spanned::span)),
            ("ssh_config", raw.ssh_config.as_ref().map(Spanned::span)),
            (
                "server_binary",
                raw.server_binary.as_ref().map(Spanned::span),
            ),
        ];
        return match stray.into_iter().find(|(_, span)| span.is_some()) {
            Some((key, span)) => Err(error_at(
                span,
                format!(
                    "{key} needs ssh_hosts = \"hosts.txt\": the hosts to start servers on with ssh"
                ),
            )),
            None => Ok(None),
        };
    };
    let others = [
        ("servers", raw.servers.is_some()),
        ("servers_file", raw.servers_file.is_some()),
        ("local", raw.local.is_some()),
    ];
    if let Some((key, _)) = others.into_iter().find(|(_, given)| *given) {
        return Err(error_at(
            Some(hosts_file.span()),
            format!("give either ssh_hosts or {key}, not both"),
        ));
    }
    if let Some(tls) = raw.tls.as_ref().filter(|on| *on.get_ref()) {
        return Err(error_at(
            Some(tls.span()),
            "servers on ssh_hosts take plain TCP (with a token drawn for them): remove tls = true"
                .into(),
        ));
    }
    let path = base.join(hosts_file.get_ref());
    let launch = raw.launch.is_some();
    let hosts = if launch {
        read_hosts_file(&path)?
    } else {
        Vec::new()
    };
    Ok(Some(SshServers {
        hosts_file: path,
        hosts,
        launch,
        config: raw.ssh_config.as_ref().map(|f| base.join(f.get_ref())),
        server_binary: raw.server_binary.as_ref().map(|f| base.join(f.get_ref())),
        port,
    }))
}

/// Whom the client trusts under `tls = true`: the `tls_ca` file's authorities (read
/// now, relative to the job file's folder) or the `tls_fingerprint`. Either key without
/// `tls = true`, both at once, or neither with it, is an error at the key to fix.
fn tls_trust(
    raw: &RawJobFile,
    base: &Path,
    error_at: &dyn Fn(Option<Range<usize>>, String) -> JobFileError,
) -> Result<Option<TlsTrust>, JobFileError> {
    let on = raw.tls.as_ref().is_some_and(|on| *on.get_ref());
    if !on {
        let stray = [
            ("tls_ca", raw.tls_ca.as_ref().map(Spanned::span)),
            (
                "tls_fingerprint",
                raw.tls_fingerprint.as_ref().map(Spanned::span),
            ),
        ];
        if let Some((key, span)) = stray.into_iter().find(|(_, span)| span.is_some()) {
            return Err(error_at(
                span,
                format!("{key} applies only to TLS connections: add tls = true, or remove {key}"),
            ));
        }
        return Ok(None);
    }
    match (&raw.tls_ca, &raw.tls_fingerprint) {
        (Some(_), Some(fingerprint)) => Err(error_at(
            Some(fingerprint.span()),
            "give either tls_ca or tls_fingerprint, not both".into(),
        )),
        (Some(ca), None) => {
            let path = base.join(ca.get_ref());
            let certificates = read_certificates(&path)
                .map_err(|message| error_at(Some(ca.span()), format!("tls_ca: {message}")))?;
            Ok(Some(TlsTrust::Ca { path, certificates }))
        }
        (None, Some(fingerprints)) => fingerprints
            .get_ref()
            .0
            .iter()
            .map(|text| Fingerprint::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map(|pinned| Some(TlsTrust::Pinned(pinned)))
            .map_err(|message| {
                error_at(
                    Some(fingerprints.span()),
                    format!("tls_fingerprint: {message}"),
                )
            }),
        (None, None) => Err(error_at(
            raw.tls.as_ref().map(Spanned::span),
            "tls = true needs tls_fingerprint = \"...\" (the line pool-server --tls printed at \
             start) or tls_ca = \"ca.pem\" (the authority that signed the servers' certificates)"
                .into(),
        )),
    }
}

/// A key that takes a string or a list of strings (`tls_fingerprint`).
struct OneOrMore(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMore;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a non-empty list of strings")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<OneOrMore, E> {
                Ok(OneOrMore(vec![text.to_string()]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut items: A,
            ) -> Result<OneOrMore, A::Error> {
                let mut all = Vec::new();
                while let Some(item) = items.next_element()? {
                    all.push(item);
                }
                if all.is_empty() {
                    return Err(serde::de::Error::invalid_length(0, &self));
                }
                Ok(OneOrMore(all))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Reads the `[job]` table as the kind it names asks: each kind parses its own keys
/// (refusing unknown ones) and checks their values, and its errors point at them.
fn parse_job(
    mut document: toml::de::DeTable<'_>,
    raw: &Spanned<RawJobKind>,
    error_at: &dyn Fn(Option<Range<usize>>, String) -> JobFileError,
) -> Result<JobSpec, JobFileError> {
    let kind = &raw.get_ref().kind;
    let Some(mut table) = document.remove("job") else {
        return Err(error_at(Some(raw.span()), "no [job] table".into()));
    };
    if let toml::de::DeValue::Table(keys) = table.get_mut() {
        *keys = std::mem::take(keys)
            .into_iter()
            .filter(|(key, _)| key.get_ref() != "kind")
            .collect();
    }
    let spec = JobSpec::deserialize(kind.get_ref(), table.into_deserializer())
        .ok_or_else(|| {
            error_at(
                Some(kind.span()),
                format!(
                    "unknown job kind {:?}; the kinds are {}",
                    kind.get_ref(),
                    KIND_NAMES
                        .iter()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?
        .map_err(|e| {
            let message = format!(
                "{} (in a {} job)",
                plain_types(e.message().trim()),
                kind.get_ref()
            );
            error_at(e.span(), message)
        })?;
    spec.validate()
        .map_err(|e| error_at(Some(e.span.unwrap_or_else(|| raw.span())), e.message))?;
    Ok(spec)
}

impl JobFile {
    /// Builds the job, loading its data (a CSV or .npy matrix is read here), and checks that it
    /// splits into [`parts`](Self::parts).
    pub fn load_job(&self) -> Result<Job, JobFileError> {
        let base = self.path.parent().unwrap_or(Path::new(""));
        let job = self.job.load(base).map_err(|message| JobFileError {
            path: self.path.display().to_string(),
            location: None,
            message,
        })?;
        if self.parts as u64 > job.split_units() {
            return Err(JobFileError {
                path: self.path.display().to_string(),
                location: Some(self.parts_location),
                message: format!(
                    "parts = {} is more than the {} {} this {} job splits into",
                    self.parts,
                    job.split_units(),
                    job.unit(),
                    job.kind()
                ),
            });
        }
        Ok(job)
    }
}

/// The entries of a list file (a servers file, an ssh hosts file): each line's text
/// before any `#`, trimmed, with where it starts; blank and comment lines skipped.
pub fn listed_lines(text: &str) -> impl Iterator<Item = (Location, &str)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let entry = line.split('#').next().unwrap_or("").trim();
        (!entry.is_empty()).then(|| {
            let location = Location {
                line: index + 1,
                column: line.find(entry).unwrap_or(0) + 1,
            };
            (location, entry)
        })
    })
}

/// Reads a servers file: one `host:port` (or `N/host:port`, N slots) per line; `#`
/// starts a comment; blank lines are skipped.
pub fn read_servers_file(path: &Path) -> Result<Vec<String>, JobFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| JobFileError {
        path: shown.clone(),
        location: None,
        message: format!("cannot read the servers file: {e}"),
    })?;
    let mut servers = Vec::new();
    for (location, entry) in listed_lines(&text) {
        ServerEntry::parse(entry).map_err(|message| JobFileError {
            path: shown.clone(),
            location: Some(location),
            message,
        })?;
        servers.push(entry.to_string());
    }
    if servers.is_empty() {
        return Err(JobFileError {
            path: shown,
            location: None,
            message: "no servers listed: write one host:port per line".into(),
        });
    }
    Ok(servers)
}

/// Checks that `address` looks like `host:port` with a port number.
pub fn check_address(address: &str) -> Result<(), String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u64>().is_ok() => {
            match port.parse::<u16>() {
                Ok(p) if p != 0 => Ok(()),
                _ => Err(format!("{address:?}: the port must be between 1 and 65535")),
            }
        }
        _ => Err(format!(
            "{address:?} is not a server address: write host:port, e.g. \"127.0.0.1:7000\""
        )),
    }
}

/// A parser's message with Rust's type names (`expected u64`) put in words.
fn plain_types(message: &str) -> String {
    const WORDS: [(&str, &str); 8] = [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number (0 or more)"),
        ("usize", "a whole number (0 or more)"),
        ("i64", "a whole number"),
        ("f32", "a number"),
        ("f64", "a number"),
    ];
    WORDS
        .iter()
        .fold(message.to_string(), |message, (rust, words)| {
            message.replace(&format!("expected {rust}"), &format!("expected {words}"))
        })
}

fn location_of(text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Location { line, column }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text, Path::new("job.toml")).unwrap_err().to_string()
    }

    #[test]
    fn a_server_listed_twice_is_used_once_with_a_warning() {
        let entries = |list: &[&str]| -> Vec<ServerEntry> {
            list.iter()
                .map(|e| ServerEntry::parse(e).unwrap())
                .collect()
        };
        let (merged, warnings) =
            merge_duplicate_servers(entries(&["a:1", "b:2", "A:1", "c:3", "a:1"]));
        assert_eq!(merged, entries(&["a:1", "b:2", "c:3"]));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with(
                "server a:1 is listed 3 times: used once, with the workers it reports"
            ),
            "{warnings:?}"
        );
        let (merged, warnings) = merge_duplicate_servers(entries(&["2/a:1", "3/a:1", "b:2"]));
        assert_eq!(merged, entries(&["5/a:1", "b:2"]));
        assert!(warnings[0].contains("with 5 slots"), "{warnings:?}");
        let (merged, warnings) = merge_duplicate_servers(entries(&["2/a:1", "a:1"]));
        assert_eq!(merged, entries(&["a:1"]));
        assert_eq!(warnings.len(), 1);
        let (_, warnings) = merge_duplicate_servers(entries(&["a:1", "b:1"]));
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_loop_job_parses() {
        let file = parse(
            "parts = 3\nservers = [\"a:1\", \"b:2\"]\nseed = 4\n[job]\nkind = \"loop\"\niterations = 10\n",
            Path::new("dir/job.toml"),
        )
        .unwrap();
        assert_eq!(file.parts, 3);
        assert_eq!(file.servers, ["a:1", "b:2"]);
        assert_eq!(file.seed, Some(4));
        assert_eq!(
            (file.schedule, file.placement, file.speculate),
            (Schedule::Dynamic, Placement::LeastLoaded, true)
        );
        assert_eq!(file.job.kind(), "loop");
        assert_eq!(file.job.planned_units(), Some(10));
        assert_eq!(file.client, ClientSettings::default());
        let file = parse(
            "parts = 1\nconnect_timeout = 0.5\npart_timeout = 60\nmax_attempts = 5\nfallback = \"local\"\n\
             token = \"s3cret\"\n[job]\nkind = \"loop\"\niterations = 10\n",
            Path::new("job.toml"),
        )
        .unwrap();
        assert_eq!(file.client.connect_timeout, Duration::from_millis(500));
        assert_eq!(file.client.part_timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            (file.client.max_attempts, file.client.fallback),
            (5, Fallback::Local)
        );
        assert_eq!(file.client.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn errors_name_line_and_column() {
        let base = "parts = 2\n[job]\nkind = \"loop\"\niterations = 10\n";
        assert_eq!(
            error(&format!("{base}colour = 3\n")),
            "job.toml:5:1: unknown field `colour`, expected `iterations` (in a loop job)"
        );
        assert_eq!(
            error("parts = 0\n[job]\nkind = \"loop\"\niterations = 10\n"),
            "job.toml:1:9: parts must be at least 1"
        );
        assert_eq!(
            error("parts = 20\n[job]\nkind = \"loop\"\niterations = 10\n"),
            "job.toml:1:9: parts = 20 is more than the 10 iterations to split"
        );
        assert_eq!(
            error("parts = \"two\"\n[job]\nkind = \"loop\"\niterations = 10\n"),
            "job.toml:1:9: invalid type: string \"two\", expected a whole number (0 or more)"
        );
        assert_eq!(
            error("parts = 2\n[job]\nkind = \"loop\"\niterations = 1.5\n"),
            "job.toml:4:14: invalid type: floating point `1.5`, expected a whole number (0 or more) (in a loop job)"
        );
        assert_eq!(
            error(
                "parts = 2\nconnect_timeout = \"soon\"\n[job]\nkind = \"loop\"\niterations = 10\n"
            ),
            "job.toml:2:19: invalid type: string \"soon\", expected a number"
        );
        assert!(
            error("parts = 2\n[job]\nkind = \"lop\"\niterations = 10\n").starts_with(
                "job.toml:3:8: unknown job kind \"lop\"; the kinds are \"loop\", \"matrix-sum\""
            ),
        );
        assert_eq!(
            error("parts = 2\n[job]\nkind = \"loop\"\nrows = 10\n"),
            "job.toml:4:1: unknown field `rows`, expected `iterations` (in a loop job)"
        );
        let matrix = "parts = 2\n[job]\nkind = \"matrix-sum\"\n";
        assert_eq!(
            error(&format!("{matrix}csv = \"m.csv\"\nrows = 3\n")),
            "job.toml:5:8: `rows` cannot be combined with `csv`: a CSV matrix has its own size"
        );
        assert_eq!(
            error(&format!("{matrix}rows = 3\n")),
            "job.toml:2:1: a matrix-sum job needs `rows` and `cols` (a generated matrix), `csv = \"file.csv\"` or `npy = \"file.npy\"`"
        );
        assert_eq!(
            error(&format!("{matrix}rows = 3\ncols = 0\n")),
            "job.toml:5:8: a matrix dimension must be at least 1"
        );
        assert_eq!(
            error("parts = 2\n[job]\niterations = 3\n"),
            "job.toml:2:1: missing field `kind`"
        );
        assert_eq!(
            error("parts = 2\n[job]\nkind = \"loop\"\niterations = 0\n"),
            "job.toml:4:14: iterations must be at least 1"
        );
        assert!(
            error("parts = 2\n").starts_with("job.toml:1:1: missing field `job`"),
            "{}",
            error("parts = 2\n")
        );
        assert_eq!(
            error("parts = 2\n[job]\nkind = \"matrix-sum\"\nrows = 4294967296\ncols = 4294967296\n"),
            "job.toml:5:8: a 4294967296 x 4294967296 matrix of 8-byte integers is larger than the 32 GiB the client may hold"
        );
        assert_eq!(
            error("parts = 2\npart_timeout = -1\n[job]\nkind = \"loop\"\niterations = 10\n"),
            "job.toml:2:16: part_timeout must be a positive number of seconds"
        );
        assert_eq!(
            error("parts = 2\nfallback = \"remote\"\n[job]\nkind = \"loop\"\niterations = 10\n"),
            "job.toml:2:12: unknown variant `remote`, expected `none` or `local`"
        );
        assert_eq!(
            error("parts = 2\nschedule = \"static\"\nspeculate = true\n[job]\nkind = \"loop\"\niterations = 10\n"),
            "job.toml:3:13: speculate = true needs schedule = \"dynamic\": a static deal sends no copies"
        );
        assert_eq!(
            error("parts = 2\nplacement = \"fastest\"\n[job]\nkind = \"loop\"\niterations = 10\n"),
            "job.toml:2:13: unknown variant `fastest`, expected one of `least-loaded`, `two-choices`, `shuffle`, `round-robin`, `random`"
        );
        assert_eq!(
            error("parts = 2\nservers = [\"nowhere\"]\n[job]\nkind = \"loop\"\niterations = 10\n"),
            "job.toml:2:12: \"nowhere\" is not a server address: write host:port, e.g. \"127.0.0.1:7000\""
        );
    }

    #[test]
    fn servers_take_a_list_or_slurm_and_port_goes_only_with_slurm() {
        let loop_job = "[job]\nkind = \"loop\"\niterations = 10\n";
        assert_eq!(
            error(&format!("parts = 2\nservers = \"everywhere\"\n{loop_job}")),
            "job.toml:2:11: servers = \"everywhere\" is not one of the forms servers takes: \
             a list of \"host:port\" addresses (or \"dns:name:port\"), \"slurm\" or \"discover\""
        );
        assert_eq!(
            error(&format!("parts = 2\nservers = 7000\n{loop_job}")),
            "job.toml:2:11: invalid type: integer `7000`, expected a list of \"host:port\" addresses (or \"dns:name:port\"), \"slurm\" or \"discover\""
        );
        assert_eq!(
            error(&format!(
                "parts = 2\nservers = [\"a:1\"]\ndiscover_window = 3\n{loop_job}"
            )),
            "job.toml:3:19: discover_window is for servers = \"discover\""
        );
        assert_eq!(
            error(&format!(
                "parts = 2\nservers = \"discover\"\ndiscover_window = 0\n{loop_job}"
            )),
            "job.toml:3:19: discover_window must be a positive number of seconds"
        );
        let found = parse(
            &format!("parts = 2\nservers = \"discover\"\ndiscover_window = 0.5\n{loop_job}"),
            Path::new("job.toml"),
        )
        .unwrap();
        assert_eq!(found.discover, Some(Duration::from_millis(500)));
        assert!(found.servers.is_empty());
        assert_eq!(
            error(&format!(
                "parts = 2\nservers = [\"a:1\"]\nport = 7001\n{loop_job}"
            )),
            "job.toml:3:8: port is for servers = \"slurm\" or ssh_hosts (host names without a port); \
             give each address in servers as host:port"
        );
        assert_eq!(
            error(&format!(
                "parts = 2\nservers = \"slurm\"\nport = 0\n{loop_job}"
            )),
            "job.toml:3:8: port must be between 1 and 65535"
        );
        assert_eq!(
            nodes_at_port("node[01-02],gpu3", 7001).unwrap(),
            ["node01:7001", "node02:7001", "gpu3:7001"]
        );
        assert_eq!(
            nodes_at_port("node[01-02", 7001).unwrap_err(),
            "SLURM_JOB_NODELIST: \"node[01-02\": a `[` without its `]`"
        );
    }

    #[test]
    fn ssh_keys_are_checked_where_they_are_written() {
        let job = "[job]\nkind = \"loop\"\niterations = 10\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts.txt"), "lab1\nalice@lab2:2222\n").unwrap();
        let at = dir.path().join("job.toml");
        let file = parse(
            &format!("parts = 1\nlaunch = \"ssh\"\nssh_hosts = \"hosts.txt\"\nssh_config = \"cfg\"\nport = 7100\n{job}"),
            &at,
        )
        .unwrap();
        let ssh = file.ssh.unwrap();
        assert!(ssh.launch);
        assert_eq!(ssh.hosts.len(), 2);
        assert_eq!(ssh.port, 7100);
        assert_eq!(ssh.config, Some(dir.path().join("cfg")));
        assert_eq!(ssh.hosts_file, dir.path().join("hosts.txt"));
        // Without launch the hosts file is the key of `pool-client up`'s state: not read.
        let up = parse(
            &format!("parts = 1\nssh_hosts = \"elsewhere.txt\"\n{job}"),
            Path::new("job.toml"),
        )
        .unwrap();
        assert_eq!(
            up.ssh.map(|s| (s.launch, s.port)),
            Some((false, DEFAULT_PORT))
        );
        assert_eq!(
            error(&format!("parts = 1\nlaunch = \"ssh\"\n{job}")),
            "job.toml:2:10: launch = \"ssh\" needs ssh_hosts = \"hosts.txt\": the hosts to start servers on with ssh"
        );
        assert_eq!(
            error(&format!("parts = 1\nlaunch = \"slurm\"\n{job}")),
            "job.toml:2:10: unknown variant `slurm`, expected `ssh`"
        );
        assert_eq!(
            error(&format!(
                "parts = 1\nlocal = 2\nssh_hosts = \"h.txt\"\n{job}"
            )),
            "job.toml:3:13: give either ssh_hosts or local, not both"
        );
        assert_eq!(
            error(&format!("parts = 1\nssh_hosts = \"h.txt\"\ntls = true\n{job}")),
            "job.toml:3:7: servers on ssh_hosts take plain TCP (with a token drawn for them): remove tls = true"
        );
        assert!(error(&format!(
            "parts = 1\nlaunch = \"ssh\"\nssh_hosts = \"none.txt\"\n{job}"
        ))
        .contains("none.txt: cannot read the hosts file"));
    }

    #[test]
    fn tls_keys_are_checked_where_they_are_written() {
        let job = "[job]\nkind = \"loop\"\niterations = 10\n";
        let pin = "tls_fingerprint = \"BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD\"\n";
        let file = parse(
            &format!("parts = 1\ntls = true\n{pin}{job}"),
            Path::new("job.toml"),
        )
        .unwrap();
        assert_eq!(
            file.client.tls,
            Some(TlsTrust::Pinned(vec![Fingerprint::of(b"abc")]))
        );
        assert_eq!(
            error(&format!("parts = 1\n{pin}{job}")),
            "job.toml:2:19: tls_fingerprint applies only to TLS connections: add tls = true, or remove tls_fingerprint"
        );
        assert_eq!(
            error(&format!("parts = 1\ntls = false\ntls_ca = \"ca.pem\"\n{job}")),
            "job.toml:3:10: tls_ca applies only to TLS connections: add tls = true, or remove tls_ca"
        );
        assert_eq!(
            error(&format!(
                "parts = 1\ntls = true\ntls_ca = \"ca.pem\"\n{pin}{job}"
            )),
            format!("job.toml:4:19: give either tls_ca or tls_fingerprint, not both")
        );
        assert!(error(&format!("parts = 1\ntls = true\n{job}"))
            .starts_with("job.toml:2:7: tls = true needs tls_fingerprint = \"...\""));
        assert_eq!(
            error(&format!("parts = 1\ntls = true\ntls_fingerprint = \"BA:78\"\n{job}")),
            "job.toml:3:19: tls_fingerprint: 4 hex digits: a SHA-256 fingerprint is 64 hex digits, \
             colons allowed, as in the `tls_fingerprint = \"...\"` line pool-server prints at start"
        );
        let two = format!(
            "tls_fingerprint = [\"{}\", \"{}\"]\n",
            Fingerprint::of(b"a"),
            Fingerprint::of(b"b")
        );
        let file = parse(
            &format!("parts = 1\ntls = true\n{two}{job}"),
            Path::new("job.toml"),
        )
        .unwrap();
        assert_eq!(
            file.client.tls,
            Some(TlsTrust::Pinned(vec![
                Fingerprint::of(b"a"),
                Fingerprint::of(b"b")
            ]))
        );
        assert!(error(&format!(
            "parts = 1\ntls = true\ntls_fingerprint = []\n{job}"
        ))
        .starts_with(
            "job.toml:3:19: invalid length 0, expected a string or a non-empty list of strings"
        ));
        let ca = error(&format!(
            "parts = 1\ntls = true\ntls_ca = \"none.pem\"\n{job}"
        ));
        assert!(
            ca.starts_with("job.toml:3:10: tls_ca: cannot read none.pem: No such file"),
            "{ca}"
        );
    }

    #[test]
    fn matrix_file_keys_are_checked_where_they_are_written() {
        let matrix = "parts = 2\n[job]\nkind = \"matrix-sum\"\n";
        let cases = [
            (
                "csv = \"m.csv\"\ncsv_delimiter = \"|\"\n",
                "job.toml:5:17: invalid value: string \"|\", expected \",\", \";\" or \"\\t\" (a tab) (in a matrix-sum job)",
            ),
            (
                "csv = \"m.csv\"\ncsv_header = \"yes\"\n",
                "job.toml:5:14: invalid value: string \"yes\", expected true, false or \"auto\" (in a matrix-sum job)",
            ),
            (
                "rows = 2\ncols = 2\nelement = \"f32\"\n",
                "job.toml:6:11: unknown variant `f32`, expected `i64` or `f64` (in a matrix-sum job)",
            ),
            (
                "npy = \"m.npy\"\nelement = \"f64\"\n",
                "job.toml:5:11: `element` cannot be combined with `npy`: the file's dtype says whether it holds i64 or f64",
            ),
            (
                "npy = \"m.npy\"\ncols = 3\n",
                "job.toml:5:8: `cols` cannot be combined with `npy`: an .npy matrix has its own size",
            ),
            (
                "csv = \"m.csv\"\nnpy = \"m.npy\"\n",
                "job.toml:5:7: give one of `csv` and `npy`, not both",
            ),
            (
                "rows = 2\ncols = 2\ncsv_header = true\n",
                "job.toml:6:14: `csv_header` applies only to a `csv` matrix",
            ),
            (
                "rows = 4294967296\ncols = 4294967296\nelement = \"f64\"\n",
                "job.toml:5:8: a 4294967296 x 4294967296 matrix of 8-byte floats is larger than the 32 GiB the client may hold",
            ),
        ];
        for (keys, expected) in cases {
            assert_eq!(error(&format!("{matrix}{keys}")), expected, "{keys}");
        }
        let file = parse(
            &format!("{matrix}csv = \"m.csv\"\ncsv_delimiter = \"\\t\"\ncsv_header = \"auto\"\nelement = \"f64\"\n"),
            Path::new("job.toml"),
        )
        .unwrap();
        assert_eq!(file.job.planned_units(), None);
    }

    #[test]
    fn servers_file_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("pool-jobfile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("servers.txt");
        std::fs::write(&path, "# lab\n127.0.0.1:7001  # first\n\n  bad-entry\n").unwrap();
        let err = read_servers_file(&path).unwrap_err();
        assert_eq!(err.location, Some(Location { line: 4, column: 3 }));
        std::fs::write(&path, "# lab\n127.0.0.1:7001  # first\n\n4/host:7002\n").unwrap();
        assert_eq!(
            read_servers_file(&path).unwrap(),
            ["127.0.0.1:7001", "4/host:7002"]
        );
        std::fs::write(&path, "0/host:7002\n").unwrap();
        assert_eq!(
            read_servers_file(&path).unwrap_err().to_string(),
            format!(
                "{}:1:1: \"0/host:7002\": the slots before `/` must be a whole number of at least 1, as in \"4/host:7000\"",
                path.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
