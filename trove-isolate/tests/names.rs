//! Host names on a real guest: the daemon configured by Trove discovery alone (a fixture tree
//! whose transport URL names RabbitMQ by host name and whose resolv.conf points at a DNS
//! responder of this test's own on loopback), the answer changing under it: the allowed address
//! follows within the TTL, the old one stops working, and an address still in the answer keeps
//! working throughout. A reload that waits for DNS holds nothing else back, and a refresh of
//! the names compiles the config in force, never an edit nobody reloaded.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{metrics_port, unique, write_config, Daemon, PROBE};
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{rdata::A, RData, Record, RecordType},
};
use trove_isolate_testbed::{addr, scenario, tcp_probe, Guest, Server};

const NAME: &str = "rabbit.names.test.";
/// The floor of re-resolution: the answers' TTL.
const TTL: u32 = 5;

/// A DNS responder on 127.0.0.1:53 answering A queries for [`NAME`] with the addresses in
/// `answer` (nothing else resolves), or nothing at all while `silent`. Bounded: it stops when
/// dropped.
struct Responder {
    answer: Arc<Mutex<Vec<Ipv4Addr>>>,
    others: Others,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Port 53 is one: the tests of this file take turns (cargo runs them side by side).
    _turn: std::sync::MutexGuard<'static, ()>,
}

static PORT_53: Mutex<()> = Mutex::new(());

/// Other names a [`Responder`] answers (absolute, with the address), or never answers (`None`).
type Others = Arc<Mutex<Vec<(String, Option<Ipv4Addr>)>>>;

impl Responder {
    fn start(first: &[Ipv4Addr]) -> Responder {
        let turn = PORT_53.lock().unwrap_or_else(|e| e.into_inner());
        let socket =
            UdpSocket::bind("127.0.0.1:53").expect("binding 127.0.0.1:53 for the responder");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let answer = Arc::new(Mutex::new(first.to_vec()));
        let others: Others = Arc::default();
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (answer2, silent2, stop2) = (answer.clone(), silent.clone(), stop.clone());
        let others2 = others.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if silent2.load(Ordering::Relaxed) {
                    continue;
                }
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(query.op_code())
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true);
                reply.add_queries(query.queries().to_vec());
                let mut known = false;
                let other = query.queries().first().and_then(|q| {
                    let name = q.name().to_ascii();
                    let others = others2.lock().expect("others");
                    others
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                        .map(|(_, a)| (q.clone(), *a))
                });
                match other {
                    // A name it never answers: the lookup times out.
                    Some((_, None)) => continue,
                    Some((q, Some(ip))) => {
                        known = true;
                        if q.query_type() == RecordType::A {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                TTL,
                                RData::A(A(ip)),
                            ));
                        }
                    }
                    None => {}
                }
                for q in query.queries() {
                    if q.name().to_ascii().eq_ignore_ascii_case(NAME) {
                        known = true;
                        if q.query_type() == RecordType::A {
                            for ip in answer2.lock().expect("answer").iter() {
                                reply.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    TTL,
                                    RData::A(A(*ip)),
                                ));
                            }
                        }
                    }
                }
                if !known {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Responder {
            answer,
            others,
            silent,
            stop,
            thread: Some(thread),
            _turn: turn,
        }
    }

    fn answer(&self, addresses: &[Ipv4Addr]) {
        *self.answer.lock().expect("answer") = addresses.to_vec();
    }

    /// Answers `name` (absolute) with `ip`, or never answers it (`None`).
    fn also(&self, name: &str, ip: Option<Ipv4Addr>) {
        self.others
            .lock()
            .expect("others")
            .push((name.to_owned(), ip));
    }

    /// Stops answering (a resolver that does not answer: the lookup times out), or answers again.
    fn silence(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Trove guest's files naming RabbitMQ by host name, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(guest: &Guest) -> Tree {
        let tree = Tree(std::env::temp_dir().join(unique("ti-names-guest")));
        tree.write(
            "etc/trove/conf.d/guest_info.conf",
            "[DEFAULT]\ndatastore_manager = mysql\n".into(),
        );
        tree.rabbitmq_port(5672);
        tree.write(
            "etc/trove/eth1.json",
            format!("{{\"mac_address\": \"{}\"}}", guest.biz_mac_text()),
        );
        tree.write("etc/resolv.conf", "nameserver 127.0.0.1\n".into());
        tree
    }

    fn write(&self, path: &str, text: String) {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, text).expect("fixture file");
    }

    /// The agent's transport URL: RabbitMQ by [`NAME`], on `port`.
    fn rabbitmq_port(&self, port: u16) {
        self.rabbitmq_at(NAME.trim_end_matches('.'), port);
    }

    /// The agent's transport URL: RabbitMQ by `host`, on `port`.
    fn rabbitmq_at(&self, host: &str, port: u16) {
        self.write(
            "etc/trove/conf.d/trove-guestagent.conf",
            format!("[DEFAULT]\ntransport_url = rabbit://trove:names-secret@{host}:{port}/trove\n"),
        );
    }

    fn root(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (bounded by `within`) until the probe gives `want`; how long it took.
fn until(within: Duration, want: bool, probe: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if probe() == want {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A guest configured by Trove discovery alone, its RabbitMQ named by [`NAME`] (the responder
/// answering), and the daemon's config for it. Fields drop in order: listeners and responder
/// before the guest's namespaces.
struct Named {
    _servers: Vec<Server>,
    responder: Responder,
    tree: Tree,
    guest: Guest,
    pin_path: String,
    config: PathBuf,
    metrics: SocketAddr,
}

impl Named {
    fn new(label: &str, first: &[Ipv4Addr]) -> Named {
        let guest = Guest::new(label);
        let port = metrics_port();
        let servers = scenario::servers(&guest, port);
        let responder = Responder::start(first);
        let tree = Tree::new(&guest);
        let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
        let config = write_config(&format!(
            "pin_path = \"{pin_path}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [trove]\nroot = \"{}\"\n\
             [management]\ninterface = \"{}\"\nnetns = \"{}\"\n\
             [business]\nnetns = \"{}\"\n",
            tree.root().display(),
            guest.mgmt_nic(),
            guest.host.path().display(),
            guest.container.path().display(),
        ));
        Named {
            _servers: servers,
            responder,
            tree,
            guest,
            pin_path,
            config,
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn start(&self) -> Daemon {
        Daemon::start(&self.config, self.pin_path.as_ref(), self.metrics)
    }

    /// Whether the guest reaches port 5672 of `ip` (through the management NIC).
    fn reach(&self, ip: Ipv4Addr) -> bool {
        tcp_probe(&self.guest.host, None, SocketAddr::from((ip, 5672)), PROBE)
    }
}

/// Whether /metrics answers within `within` (connect, request and response).
fn scrape_within(metrics: SocketAddr, within: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&metrics, within) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(within));
    let _ = stream.set_write_timeout(Some(within));
    if stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).is_ok() && first.starts_with(b"HTTP/1.1 200")
}

#[test]
fn a_host_name_is_followed_within_its_ttl() {
    let old: Ipv4Addr = addr::RABBITMQ_V4.parse().expect("addr");
    // A host of the management network with a listener on 5672 that no rule names.
    let new: Ipv4Addr = addr::UNLISTED_V4.parse().expect("addr");
    let n = Named::new("nm", &[old]);
    let check = common::cli(&["check", "--config", &n.config.display().to_string()]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "check refused the tree: {check:?}");
    assert!(
        shown.contains("rabbit.names.test = 192.0.2.10") && !shown.contains("names-secret"),
        "{shown}"
    );
    let daemon = n.start();
    let reach = |ip| n.reach(ip);
    assert!(reach(old), "the name's address is unreachable");
    assert!(
        !reach(new),
        "an address the name does not have is reachable"
    );

    // Both addresses: the new one opens within the TTL; the old one never closes meanwhile.
    n.responder.answer(&[old, new]);
    let within = Duration::from_secs(u64::from(TTL) + 4);
    let start = Instant::now();
    let mut old_failed = 0;
    let mut opened = None;
    while start.elapsed() < within && opened.is_none() {
        if !reach(old) {
            old_failed += 1;
        }
        if reach(new) {
            opened = Some(start.elapsed());
        }
    }
    assert!(
        opened.is_some(),
        "the new address never opened:\n{}",
        daemon.stderr()
    );
    assert_eq!(old_failed, 0, "an address still in the answer was refused");
    // `explain` names the entry by the name, looked up as the daemon does.
    let explained = common::cli(&[
        "explain",
        "--pin-path",
        &n.pin_path,
        "--role",
        "management",
        "--to",
        &format!("{new}:5672/tcp"),
    ]);
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(
        text.contains("pass (allowed): rule")
            && text.contains("(rabbitmq rabbit.names.test:5672")
            && text.contains(&format!("= {new}, from")),
        "{text}"
    );

    // Only the new one: the old one closes within the TTL.
    n.responder.answer(&[new]);
    let closed = until(within, false, || reach(old));
    assert!(
        closed.is_some(),
        "the old address stayed open:\n{}",
        daemon.stderr()
    );
    assert!(reach(new));
    println!(
        "a new address opened {:?} after the answer changed, an old one closed {:?} after",
        opened.expect("opened"),
        closed.expect("closed")
    );
    let log = daemon.stderr();
    assert!(
        log.contains("host names resolve differently now") && !log.contains("names-secret"),
        "{log}"
    );
}

/// At boot the unit starts before DHCP has given the guest a resolver. A name that does not
/// resolve then fails closed: `check` warns, the daemon enforces, nothing reaches the name's
/// endpoint, and the name is looked up again until it resolves, when its endpoint opens.
#[test]
fn a_name_that_does_not_resolve_at_start_opens_once_it_does() {
    let rabbit: Ipv4Addr = addr::RABBITMQ_V4.parse().expect("addr");
    let n = Named::new("nx", &[]);
    let check = common::cli(&["check", "--config", &n.config.display().to_string()]);
    let warned = String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success()
            && warned.contains("WARNING: ")
            && warned.contains("does not resolve"),
        "{check:?}"
    );
    let daemon = n.start();
    assert!(
        !n.reach(rabbit),
        "an endpoint whose name does not resolve is reachable"
    );
    // The daemon's log says it too (a reload runs no `check`).
    let log = daemon.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("does not resolve")),
        "{log}"
    );
    let unresolved = || -> Option<String> {
        let text = daemon.scrape();
        let line = text
            .lines()
            .find(|l| l.starts_with("trove_isolate_unresolved_names "))?;
        line.rsplit(' ').next().map(str::to_owned)
    };
    assert_eq!(unresolved().as_deref(), Some("1"));
    n.responder.answer(&[rabbit]);
    let within = trove_isolate::resolve::UNRESOLVED_RETRY + Duration::from_secs(5);
    let opened = until(within, true, || n.reach(rabbit));
    assert!(
        opened.is_some(),
        "the name resolved and its endpoint stayed shut:\n{}",
        daemon.stderr()
    );
    println!(
        "the endpoint opened {:?} after its name began to resolve",
        opened.expect("opened")
    );
    assert_eq!(unresolved().as_deref(), Some("0"));
}

/// A transport URL naming RabbitMQ by a short name, as deployments that rely on the guest's
/// search domains write it: the agent's resolver completes it with resolv.conf's search list,
/// and so must the daemon's, or RabbitMQ stays shut (the name "does not resolve").
#[test]
fn a_short_name_is_completed_with_the_search_list() {
    let rabbit: Ipv4Addr = addr::RABBITMQ_V4.parse().expect("addr");
    let n = Named::new("short", &[rabbit]);
    let (short, domain) = NAME.trim_end_matches('.').split_once('.').expect("a dot");
    n.tree.rabbitmq_at(short, 5672);
    // The first domain does not have the name (the responder says NXDOMAIN), the second does.
    n.tree.write(
        "etc/resolv.conf",
        format!("nameserver 127.0.0.1\nsearch elsewhere.test {domain}\n"),
    );
    let daemon = n.start();
    assert!(
        n.reach(rabbit),
        "RabbitMQ named {short:?}, {NAME} by the search list, is shut:\n{}",
        daemon.stderr()
    );
    assert!(
        daemon
            .scrape()
            .lines()
            .any(|l| l == "trove_isolate_unresolved_names 0"),
        "the short name counts as unresolved"
    );
}

/// The resolver asks for a name as the agent's does (eventlet's, over dnspython): a short name
/// with each search domain before it is asked as it is (unless it has `ndots` dots), and a
/// single label as a top-level name too; the next candidate only when one has no such name (a
/// domain whose server does not answer ends the search: the name does not resolve, rather than
/// resolving to the next domain's host); and the hosts file first.
#[test]
fn the_resolver_completes_names_as_the_agents_does() {
    use trove_isolate::resolve::{Dns, Resolve as _, SearchList};

    let rabbit: Ipv4Addr = addr::RABBITMQ_V4.parse().expect("addr");
    let other: Ipv4Addr = "192.0.2.99".parse().expect("addr");
    let responder = Responder::start(&[rabbit]);
    let (short, domain) = NAME.trim_end_matches('.').split_once('.').expect("a dot");
    responder.also(&format!("{short}."), Some(other));
    responder.also(&format!("{short}.slow.test."), None);
    let dns = |domains: &[&str], ndots: usize| {
        Dns::new(vec!["127.0.0.1".parse().expect("addr")]).searching(SearchList {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            ndots,
        })
    };
    let v4 = |ip: Ipv4Addr| vec![std::net::IpAddr::V4(ip)];
    let found = |dns: &Dns, host: &str| dns.lookup(host).map(|a| a.addresses);
    // Fewer dots than ndots: the search domains first (the first one has no such name), and
    // a single label as a top-level name as well.
    let searched = dns(&["elsewhere.test", domain], 1);
    let mut both = vec![std::net::IpAddr::V4(rabbit), std::net::IpAddr::V4(other)];
    both.sort();
    assert_eq!(found(&searched, short), Ok(both));
    // As many as ndots: as it is first.
    assert_eq!(found(&dns(&[domain], 0), short), Ok(v4(other)));
    // A name ending in a dot is never completed; one with dots enough is asked as it is.
    assert_eq!(found(&searched, NAME), Ok(v4(rabbit)));
    assert_eq!(
        found(&dns(&["elsewhere.test"], 1), &NAME[..NAME.len() - 1]),
        Ok(v4(rabbit))
    );
    // A first domain whose server does not answer: no answer, not the second domain's.
    let slow = dns(&["slow.test", domain], 1);
    let err = found(&slow, short).expect_err("resolved past a domain that did not answer");
    assert!(err.contains("slow.test"), "{err}");
    // The hosts file before DNS.
    let hosts = std::env::temp_dir().join(unique("ti-hosts"));
    std::fs::write(
        &hosts,
        format!("# comment\n127.0.0.1 localhost\n192.0.2.77 {short} x # y\n"),
    )
    .expect("hosts file");
    let with_hosts = dns(&[domain], 1).with_hosts_file(hosts.clone());
    let from_file = found(&with_hosts, short);
    let _ = std::fs::remove_file(&hosts);
    assert_eq!(from_file, Ok(v4("192.0.2.77".parse().expect("addr"))));
}

/// A reload whose config names a host the resolver does not answer for waits seconds for DNS;
/// the daemon's loop goes on meanwhile (the loop that follows the NICs; here, what shows it:
/// scrapes answer), since the config is read and compiled off it. A second request while it
/// waits starts it over: the resolver answers again, the reload is applied, and the first one's
/// refusal, when its lookup gives up, is never heard.
#[test]
fn a_reload_waiting_for_dns_holds_nothing_else_back() {
    let rabbit: Ipv4Addr = addr::RABBITMQ_V4.parse().expect("addr");
    let n = Named::new("nr", &[rabbit]);
    let (responder, endpoint) = (&n.responder, n.metrics);
    let mut daemon = n.start();
    let reach = || n.reach(rabbit);
    assert!(reach(), "rabbitmq unreachable before the reload");

    responder.silence(true);
    let pid = daemon.pid().expect("running");
    let hangup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP")
    };
    hangup();
    // The lookup takes two tries of 2 s: every scrape meanwhile answers within a second.
    let start = Instant::now();
    let mut scrapes = 0;
    while start.elapsed() < Duration::from_secs(3) {
        assert!(
            scrape_within(endpoint, Duration::from_secs(1)),
            "a scrape {:?} into the reload got no answer within 1 s:\n{}",
            start.elapsed(),
            daemon.kill_for_stderr()
        );
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(scrapes >= 5, "only {scrapes} scrapes");
    responder.silence(false);
    hangup();
    let reloaded = until(Duration::from_secs(10), true, || {
        daemon.stderr().contains("reloaded ")
    });
    assert!(
        reloaded.is_some(),
        "no reload:\n{}",
        daemon.kill_for_stderr()
    );
    // Past the first lookup's two tries of 2 s: its refusal would be in the log by now.
    std::thread::sleep(Duration::from_secs(4));
    let log = daemon.stderr();
    assert_eq!(log.matches("reloaded ").count(), 1, "{log}");
    assert!(!log.contains("reload refused"), "{log}");
    assert!(reach(), "rabbitmq unreachable after the reload");

    // A reload while DNS is down: refused, so the name in force keeps its addresses (and its
    // flows), where the new config would reach it through none.
    responder.silence(true);
    let out = common::cli(&["reload", "--pin-path", &n.pin_path, "--timeout", "30"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("does not resolve now"),
        "{out:?}"
    );
    assert!(
        reach(),
        "rabbitmq unreachable after a reload while DNS was down"
    );

    // A restart while DNS is down (a crash, an upgrade, the watchdog): the name keeps the
    // addresses the policy in force reaches it at, counted as unresolved until it answers.
    daemon.stop();
    let started = Instant::now();
    let mut daemon = n.start();
    println!("started in {:?} with DNS down", started.elapsed());
    assert!(
        reach(),
        "rabbitmq unreachable after a restart while DNS was down:\n{}",
        daemon.stderr()
    );
    let log = daemon.stderr();
    assert!(
        log.contains("does not resolve") && log.contains("the addresses in force stay: 192.0.2.10"),
        "{log}"
    );
    let unresolved =
        |daemon: &Daemon| metric_value(&daemon.scrape(), "trove_isolate_unresolved_names");
    assert_eq!(unresolved(&daemon), Some(1));
    responder.silence(false);
    let within = trove_isolate::resolve::UNRESOLVED_RETRY + Duration::from_secs(10);
    assert!(
        until(within, true, || unresolved(&daemon) == Some(0)).is_some(),
        "the name never resolved again:\n{}",
        daemon.stderr()
    );
    assert!(reach(), "rabbitmq unreachable once DNS answered again");
    daemon.stop();
}

/// The value of the unlabelled metric `name` in `text`.
fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Looking the names up again compiles the config in force: an edit of the guest's files
/// that nobody reloaded (RabbitMQ's port) changes nothing, while the name's new address is
/// followed on the port in force. A reload then applies the edit.
#[test]
fn a_name_refresh_applies_no_edit_nobody_reloaded() {
    let old: Ipv4Addr = addr::RABBITMQ_V4.parse().expect("addr");
    let new: Ipv4Addr = addr::UNLISTED_V4.parse().expect("addr");
    let n = Named::new("ne", &[old]);
    let (responder, tree, pin_path) = (&n.responder, &n.tree, &n.pin_path);
    let daemon = n.start();
    let reach = |ip| n.reach(ip);
    assert!(reach(old), "rabbitmq unreachable");

    // RabbitMQ moves to 5671 in the agent's file, unreloaded; the name gains an address.
    tree.rabbitmq_port(5671);
    responder.answer(&[old, new]);
    let within = Duration::from_secs(u64::from(TTL) + 4);
    let opened = until(within, true, || reach(new));
    assert!(
        opened.is_some(),
        "the name's new address never opened on the port in force:\n{}",
        daemon.stderr()
    );
    assert!(
        reach(old),
        "the refresh applied the unreloaded edit:\n{}",
        daemon.stderr()
    );

    // The reload applies it: 5672 is no longer RabbitMQ's.
    let reload = common::cli(&["reload", "--pin-path", pin_path]);
    assert!(reload.status.success(), "reload: {reload:?}");
    assert!(!reach(old), "5672 still allowed after the reload");
}

/// The rules to the resolvers follow resolv.conf, as a name's follow its answers: DHCP rewrites
/// it (and at boot lists the servers only once it has a lease), and a resolver it no longer
/// lists is closed. Real datagrams from the guest to port 53 of a host of the management
/// network, before, while and after resolv.conf lists it.
#[test]
fn the_dns_rules_follow_resolv_conf() {
    let rabbit: Ipv4Addr = addr::RABBITMQ_V4.parse().expect("addr");
    let resolver: Ipv4Addr = addr::UNLISTED_V4.parse().expect("addr");
    let n = Named::new("nv", &[rabbit]);
    let (guest, tree) = (&n.guest, &n.tree);
    let _dns = trove_isolate_testbed::udp_server(&guest.mgmt_net, SocketAddr::from((resolver, 53)));
    let daemon = n.start();
    let dns = || {
        trove_isolate_testbed::udp_probe(&guest.host, None, SocketAddr::from((resolver, 53)), PROBE)
    };
    assert!(
        !dns(),
        "port 53 of a host resolv.conf does not list is open"
    );

    let within = Duration::from_secs(u64::from(TTL) + 4);
    tree.write(
        "etc/resolv.conf",
        format!("nameserver 127.0.0.1\nnameserver {resolver}\n"),
    );
    let opened = until(within, true, dns);
    assert!(
        opened.is_some(),
        "a resolver resolv.conf lists now never opened:\n{}",
        daemon.stderr()
    );
    tree.write("etc/resolv.conf", "nameserver 127.0.0.1\n".into());
    let closed = until(within, false, dns);
    assert!(
        closed.is_some(),
        "a resolver resolv.conf no longer lists stayed open:\n{}",
        daemon.stderr()
    );
    assert!(n.reach(rabbit));
}
