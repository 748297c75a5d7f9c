//! Host names on a real guest: the daemon configured by Trove discovery alone (a fixture tree
//! whose transport URL names RabbitMQ by host name and whose resolv.conf points at a DNS
//! responder of this test's own on loopback), the answer changing under it: the allowed address
//! follows within the TTL, the old one stops working, and an address still in the answer keeps
//! working throughout.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
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
use trove_isolate_testbed::{addr, scenario, tcp_probe, Guest};

const NAME: &str = "rabbit.names.test.";
/// The floor of re-resolution: the answers' TTL.
const TTL: u32 = 5;

/// A DNS responder on 127.0.0.1:53 answering A queries for [`NAME`] with the addresses in
/// `answer` (nothing else resolves). Bounded: it stops when dropped.
struct Responder {
    answer: Arc<Mutex<Vec<Ipv4Addr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start(first: &[Ipv4Addr]) -> Responder {
        let socket =
            UdpSocket::bind("127.0.0.1:53").expect("binding 127.0.0.1:53 for the responder");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let answer = Arc::new(Mutex::new(first.to_vec()));
        let stop = Arc::new(AtomicBool::new(false));
        let (answer2, stop2) = (answer.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
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
            stop,
            thread: Some(thread),
        }
    }

    fn answer(&self, addresses: &[Ipv4Addr]) {
        *self.answer.lock().expect("answer") = addresses.to_vec();
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
        let root = std::env::temp_dir().join(unique("ti-names-guest"));
        let write = |path: &str, text: String| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(&path, text).expect("fixture file");
        };
        write(
            "etc/trove/conf.d/guest_info.conf",
            "[DEFAULT]\ndatastore_manager = mysql\n".into(),
        );
        write(
            "etc/trove/conf.d/trove-guestagent.conf",
            format!(
                "[DEFAULT]\ntransport_url = rabbit://trove:names-secret@{}:5672/trove\n",
                NAME.trim_end_matches('.')
            ),
        );
        write(
            "etc/trove/eth1.json",
            format!("{{\"mac_address\": \"{}\"}}", guest.biz_mac_text()),
        );
        write("etc/resolv.conf", "nameserver 127.0.0.1\n".into());
        Tree(root)
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

#[test]
fn a_host_name_is_followed_within_its_ttl() {
    let guest = Guest::new("nm");
    let metrics = metrics_port();
    let _servers = scenario::servers(&guest, metrics);
    let old: Ipv4Addr = addr::RABBITMQ_V4.parse().expect("addr");
    // A host of the management network with a listener on 5672 that no rule names.
    let new: Ipv4Addr = addr::UNLISTED_V4.parse().expect("addr");
    let responder = Responder::start(&[old]);
    let tree = Tree::new(&guest);
    let pin_path = format!("/sys/fs/bpf/{}", unique("ti-test"));
    let config = write_config(&format!(
        "pin_path = \"{pin_path}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [trove]\nroot = \"{}\"\n\
         [management]\ninterface = \"{}\"\nnetns = \"{}\"\n\
         [business]\nnetns = \"{}\"\n",
        tree.root().display(),
        guest.mgmt_nic(),
        guest.host.path().display(),
        guest.container.path().display(),
    ));
    let check = common::cli(&["check", "--config", &config.display().to_string()]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "check refused the tree: {check:?}");
    assert!(
        shown.contains("rabbit.names.test = 192.0.2.10") && !shown.contains("names-secret"),
        "{shown}"
    );
    let daemon = Daemon::start(
        &config,
        pin_path.as_ref(),
        SocketAddr::from(([127, 0, 0, 1], metrics)),
    );
    let to = |ip: Ipv4Addr| SocketAddr::from((ip, 5672));
    let reach = |ip: Ipv4Addr| tcp_probe(&guest.host, None, to(ip), PROBE);
    assert!(reach(old), "the name's address is unreachable");
    assert!(
        !reach(new),
        "an address the name does not have is reachable"
    );

    // Both addresses: the new one opens within the TTL; the old one never closes meanwhile.
    responder.answer(&[old, new]);
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

    // Only the new one: the old one closes within the TTL.
    responder.answer(&[new]);
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
