//! Prometheus exposition of the datapath's counters.
//!
//! The counters live in the pinned per-CPU map, so they survive daemon restarts and stay
//! monotonic; each scrape reads them and renders a fresh registry. Label values come from the
//! shared enums' `name()`, never from a second list.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use trove_isolate_common::{family, Direction, Role, Verdict};

use crate::{
    daemon::DaemonStats,
    datapath::{Count, Table},
    state::State,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    role: String,
    table: String,
}

/// The flows of one IP family in one flow table: a role's table of each kind comes in two
/// keyings (TCP over IPv4, and the rest), each of the configured size.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowTableLabels {
    role: String,
    table: String,
    keying: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    interface: String,
    role: String,
    direction: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    interface: String,
    role: String,
    direction: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardLabels {
    direction: String,
    verdict: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabels {
    interface: String,
    role: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// The interface a role is attached to, per the state record.
fn interface_of(state: &State, role: Role) -> String {
    state
        .attached(role)
        .next()
        .map(|a| a.interface.clone())
        .unwrap_or_default()
}

/// The two exposition formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0, for scrapers that accept `application/openmetrics-text`.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, for everyone else.
    Prometheus,
}

impl Format {
    /// What an `Accept` header asks for: OpenMetrics when it names it (Prometheus does), the
    /// classic format otherwise.
    pub fn from_accept(accept: &str) -> Format {
        let wants_openmetrics = accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.replace(' ', "") == "q=0");
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The exposition text in `format`.
pub fn render_as(format: Format, counts: &[Count], state: &State, stats: &DaemonStats) -> String {
    let text = render(counts, state, stats);
    match format {
        Format::OpenMetrics => text,
        Format::Prometheus => openmetrics_to_prometheus(&text),
    }
}

/// The classic text format of an OpenMetrics exposition. They differ, for what this exposition
/// holds, only in the metadata: OpenMetrics names a counter family without its `_total` suffix
/// and has `# UNIT` and `# EOF` lines; the classic format names the family as its samples are
/// named and has neither. Samples are the same lines in both.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The exposition text (OpenMetrics) for `counts` under `state`.
pub fn render(counts: &[Count], state: &State, stats: &DaemonStats) -> String {
    let packets = Family::<PacketLabels, Counter>::default();
    let bytes = Family::<PacketLabels, Counter>::default();
    let drops = Family::<ReasonLabels, Counter>::default();
    let audit = Family::<ReasonLabels, Counter>::default();
    let entries = Family::<RoleLabels, Gauge>::default();
    let attached = Family::<AttachLabels, Gauge>::default();
    let build = Family::<VersionLabels, Gauge>::default();
    let reloads = Family::<ResultLabels, Counter>::default();
    let conntrack = Family::<FlowTableLabels, Gauge>::default();
    for (result, n) in [("ok", stats.reloads_ok), ("error", stats.reloads_error)] {
        reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc_by(n);
    }
    let drop_events = Counter::<u64>::default();
    drop_events.inc_by(stats.drop_events);
    let suppressed = Family::<StageLabels, Counter>::default();
    for (stage, n) in [
        ("datapath", stats.drop_events_unsent),
        ("log", stats.drop_events_not_logged),
    ] {
        suppressed
            .get_or_create(&StageLabels {
                stage: stage.into(),
            })
            .inc_by(n);
    }
    let reattach = Family::<InterfaceLabels, Counter>::default();
    let reattach_after_up = Family::<InterfaceLabels, Counter>::default();
    // At zero for each NIC where it is now, so that increase() sees the first one.
    for role in Role::ALL {
        let interface = interface_of(state, role);
        if !interface.is_empty() {
            for family in [&reattach, &reattach_after_up] {
                let _ = family.get_or_create(&InterfaceLabels {
                    interface: interface.clone(),
                    role: role.name().into(),
                });
            }
        }
    }
    for (family, counts) in [
        (&reattach, &stats.reattach),
        (&reattach_after_up, &stats.reattach_after_up),
    ] {
        for (role, interface, n) in counts {
            family
                .get_or_create(&InterfaceLabels {
                    interface: interface.clone(),
                    role: role.name().into(),
                })
                .inc_by(*n);
        }
    }
    let unprotected = Family::<RoleLabels, Gauge>::default();
    for role in Role::ALL {
        // A configured NIC not found or not enforced; a role without a NIC is not "unprotected"
        // but unconfigured (trove_isolate_attached says which).
        unprotected
            .get_or_create(&RoleLabels {
                role: role.name().into(),
            })
            .set(i64::from(stats.unprotected[role as usize]));
    }
    let capacity = Family::<TableLabels, Gauge>::default();
    let sizes = stats
        .conntrack_capacity
        .unwrap_or(crate::policy::ConntrackPolicy::DEFAULT);
    for role in Role::ALL {
        for (table, max) in [
            (Table::New, sizes.new_entries),
            (Table::Established, sizes.established_entries),
        ] {
            capacity
                .get_or_create(&TableLabels {
                    role: role.name().into(),
                    table: table.name().into(),
                })
                .set(i64::from(max));
        }
    }
    for live in &stats.conntrack {
        conntrack
            .get_or_create(&FlowTableLabels {
                role: live.role.name().into(),
                table: live.table.name().into(),
                keying: live.keying.name().into(),
                family: family::name(live.family).into(),
            })
            .set(live.flows as i64);
    }

    // Every series exists from the first scrape, at zero, so rate() works from the start.
    for role in Role::ALL {
        let interface = interface_of(state, role);
        for direction in Direction::ALL {
            for verdict in Verdict::ALL {
                let labels = PacketLabels {
                    interface: interface.clone(),
                    role: role.name().into(),
                    direction: direction.name().into(),
                    verdict: verdict.name().into(),
                };
                let _ = packets.get_or_create(&labels);
                let _ = bytes.get_or_create(&labels);
            }
            // As recorded, and still there at the daemon's last look (each second): a NIC not
            // found, or that lost our programs and could not have them back, is not.
            let is_attached =
                state.attachment(role, direction).is_some() && !stats.unprotected[role as usize];
            attached
                .get_or_create(&AttachLabels {
                    interface: interface.clone(),
                    role: role.name().into(),
                    direction: direction.name().into(),
                })
                .set(i64::from(is_attached));
        }
    }
    for count in counts {
        let interface = interface_of(state, count.role);
        let labels = PacketLabels {
            interface: interface.clone(),
            role: count.role.name().into(),
            direction: count.direction.name().into(),
            verdict: count.verdict.name().into(),
        };
        packets.get_or_create(&labels).inc_by(count.counter.packets);
        bytes.get_or_create(&labels).inc_by(count.counter.bytes);
        let reason = ReasonLabels {
            interface,
            role: count.role.name().into(),
            direction: count.direction.name().into(),
            reason: count.reason.name().into(),
        };
        match count.verdict {
            Verdict::Drop => drops.get_or_create(&reason).inc_by(count.counter.packets),
            Verdict::Audit => audit.get_or_create(&reason).inc_by(count.counter.packets),
            Verdict::Pass => 0,
        };
    }
    for (role, n) in &state.policy_entries {
        entries
            .get_or_create(&RoleLabels {
                role: role.name().into(),
            })
            .set(*n as i64);
    }
    build
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);

    let mut registry = Registry::default();
    registry.register(
        "trove_isolate_packets",
        "Packets seen by the datapath, by verdict",
        packets,
    );
    registry.register(
        "trove_isolate_bytes",
        "Bytes seen by the datapath, by verdict",
        bytes,
    );
    registry.register("trove_isolate_drops", "Packets dropped, by reason", drops);
    registry.register(
        "trove_isolate_audit",
        "Packets that audit mode passed but enforce mode would drop, by reason",
        audit,
    );
    registry.register(
        "trove_isolate_policy_entries",
        "Policy map entries per role",
        entries,
    );
    registry.register(
        "trove_isolate_attached",
        "1 when the role's program is attached in this direction",
        attached,
    );
    registry.register(
        "trove_isolate_build_info",
        "Build information; always 1",
        build,
    );
    registry.register(
        "trove_isolate_reloads",
        "Reloads of the config (SIGHUP), by result: error means refused, the policy in force stayed",
        reloads,
    );
    registry.register(
        "trove_isolate_conntrack_entries",
        "Live tracked flows per role, table, keying (tcp4: TCP over IPv4; wide: the rest) and IP family at the last sweep (every 10 s)",
        conntrack,
    );
    registry.register(
        "trove_isolate_conntrack_capacity",
        "Flows each role's table holds, for each keying: a full established table refuses new flows",
        capacity,
    );
    let unresolved = Gauge::<i64>::default();
    unresolved.set(stats.unresolved_names as i64);
    registry.register(
        "trove_isolate_unresolved_names",
        "Host names of the policy that did not resolve at the last lookup (the endpoints of \
         their kind that did are in force)",
        unresolved,
    );
    registry.register(
        "trove_isolate_reattach",
        "Times the programs were attached again after the NIC moved (docker-hostnic moves the \
         business NIC at every database container start), by the interface's new name",
        reattach,
    );
    registry.register(
        "trove_isolate_reattach_after_up",
        "Re-attachments that began with the moved NIC already up: packets may have reached it \
         unjudged in between",
        reattach_after_up,
    );
    // The name every Prometheus client gives it: alerts on counters that restart with the
    // daemon (`trove_isolate_reattach_after_up_total`) read it.
    let started = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    started.set(stats.started);
    registry.register(
        "process_start_time_seconds",
        "When the daemon started, in seconds since the epoch: the counters it keeps itself \
         (reloads, re-attachments, drop events) count from then",
        started,
    );
    registry.register(
        "trove_isolate_unprotected",
        "1 while the role's configured NIC is not found, or not enforced where it is",
        unprotected,
    );
    registry.register(
        "trove_isolate_drop_events",
        "Sampled drop events the daemon read from the datapath",
        drop_events,
    );
    registry.register(
        "trove_isolate_drop_events_suppressed",
        "Drop events held back: stage=datapath over the [drops] events_per_second budget or with \
         the ring full, stage=log read but over [drops] log_per_second",
        suppressed,
    );
    if !stats.boot_guard.is_empty() {
        let guarded = Family::<GuardLabels, Counter>::default();
        for c in &stats.boot_guard {
            guarded
                .get_or_create(&GuardLabels {
                    direction: c.direction.into(),
                    verdict: c.verdict.into(),
                    reason: c.reason.into(),
                })
                .inc_by(c.packets);
        }
        registry.register(
            "trove_isolate_boot_guard_packets",
            "Packets the boot guard judged while no start could enforce (first boot), by \
             verdict and reason; fixed once the daemon enforces",
            guarded,
        );
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_headers_pick_the_format() {
        use super::Format::{OpenMetrics, Prometheus};
        for (accept, want) in [
            ("", Prometheus),
            ("*/*", Prometheus),
            ("text/plain", Prometheus),
            ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", OpenMetrics),
            ("application/openmetrics-text; q=0", Prometheus),
            ("text/plain;version=0.0.4;q=1,*/*;q=0.1", Prometheus),
        ] {
            assert_eq!(super::Format::from_accept(accept), want, "{accept:?}");
        }
    }

    use trove_isolate_common::{conntrack::Keying, counters::Counter, Reason};

    use super::*;
    use crate::conntrack::Live;
    use crate::state::{Attachment, Hook};

    #[test]
    fn names_and_labels_follow_the_contract() {
        let state = State {
            mode: trove_isolate_common::Mode::Enforce,
            attachments: vec![Attachment {
                role: Role::Management,
                direction: Direction::Ingress,
                interface: "ens3".into(),
                ifindex: 2,
                netns: None,
                hook: Hook::Tcx,
                mac: None,
            }],
            policy_entries: vec![(Role::Management, 7)],
            ..State::default()
        };
        let counts = [Count {
            role: Role::Management,
            direction: Direction::Ingress,
            verdict: Verdict::Drop,
            reason: Reason::Policy,
            counter: Counter {
                packets: 3,
                bytes: 180,
            },
        }];
        let stats = DaemonStats {
            reloads_ok: 2,
            reloads_error: 1,
            conntrack: vec![Live {
                role: Role::Business,
                table: Table::Established,
                keying: Keying::Tcp4,
                family: family::V4,
                flows: 5,
            }],
            drop_events: 9,
            drop_events_not_logged: 4,
            drop_events_unsent: 11,
            reattach: vec![(Role::Business, "eth0".into(), 20)],
            reattach_after_up: vec![(Role::Business, "eth0".into(), 1)],
            unprotected: [false, true],
            unresolved_names: 1,
            conntrack_capacity: Some(crate::policy::ConntrackPolicy {
                established_entries: 4096,
                new_entries: 2048,
            }),
            boot_guard: vec![crate::boot_guard::GuardCount {
                direction: "ingress",
                verdict: "drop",
                reason: "policy",
                packets: 6,
                bytes: 400,
            }],
            started: 1_764_979_200.5,
        };
        let text = render(&counts, &state, &stats);
        let classic = openmetrics_to_prometheus(&text);
        for line in [
            "# HELP trove_isolate_packets_total Packets seen by the datapath, by verdict",
            "# TYPE trove_isolate_packets_total counter",
            "# TYPE trove_isolate_policy_entries gauge",
            r#"trove_isolate_packets_total{interface="ens3",role="management",direction="ingress",verdict="drop"} 3"#,
        ] {
            assert!(classic.contains(line), "missing {line} in:\n{classic}");
        }
        assert!(!classic.contains("# EOF"), "{classic}");
        for line in [
            r#"trove_isolate_packets_total{interface="ens3",role="management",direction="ingress",verdict="drop"} 3"#,
            r#"trove_isolate_bytes_total{interface="ens3",role="management",direction="ingress",verdict="drop"} 180"#,
            r#"trove_isolate_drops_total{interface="ens3",role="management",direction="ingress",reason="policy"} 3"#,
            r#"trove_isolate_policy_entries{role="management"} 7"#,
            r#"trove_isolate_attached{interface="ens3",role="management",direction="ingress"} 1"#,
            r#"trove_isolate_attached{interface="",role="business",direction="egress"} 0"#,
            r#"trove_isolate_build_info{version=""#,
            r#"trove_isolate_reloads_total{result="ok"} 2"#,
            r#"trove_isolate_reloads_total{result="error"} 1"#,
            r#"trove_isolate_conntrack_entries{role="business",table="established",keying="tcp4",family="ipv4"} 5"#,
            r#"trove_isolate_conntrack_capacity{role="management",table="established"} 4096"#,
            "trove_isolate_drop_events_total 9",
            r#"trove_isolate_drop_events_suppressed_total{stage="datapath"} 11"#,
            r#"trove_isolate_drop_events_suppressed_total{stage="log"} 4"#,
            r#"trove_isolate_reattach_total{interface="eth0",role="business"} 20"#,
            r#"trove_isolate_reattach_after_up_total{interface="eth0",role="business"} 1"#,
            r#"trove_isolate_boot_guard_packets_total{direction="ingress",verdict="drop",reason="policy"} 6"#,
            r#"trove_isolate_unprotected{role="management"} 0"#,
            r#"trove_isolate_unprotected{role="business"} 1"#,
            "trove_isolate_unresolved_names 1",
            "process_start_time_seconds 1764979200.5",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        // The management NIC recorded as attached, but not found at the last look.
        let lost = DaemonStats {
            unprotected: [true, false],
            ..stats
        };
        let text = render(&counts, &state, &lost);
        let line =
            r#"trove_isolate_attached{interface="ens3",role="management",direction="ingress"} 0"#;
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }

    /// The alert rules and the dashboard shipped in dist/ name only series this exposition has.
    #[test]
    fn dist_rules_and_dashboard_name_real_series() {
        // One series of every family: a drop, an audit record, an entry count, a table.
        let count = |verdict| Count {
            role: Role::Business,
            direction: Direction::Ingress,
            verdict,
            reason: Reason::Policy,
            counter: Counter::default(),
        };
        let state = State {
            policy_entries: vec![(Role::Business, 1)],
            ..State::default()
        };
        let stats = DaemonStats {
            conntrack: vec![Live {
                role: Role::Business,
                table: Table::New,
                keying: Keying::Wide,
                family: family::V6,
                flows: 0,
            }],
            reattach: vec![(Role::Business, "eth0".into(), 1)],
            reattach_after_up: vec![(Role::Business, "eth0".into(), 1)],
            ..DaemonStats::default()
        };
        let text = openmetrics_to_prometheus(&render(
            &[count(Verdict::Drop), count(Verdict::Audit)],
            &state,
            &stats,
        ));
        let known: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for file in [
            "prometheus/trove-isolate.rules.yml",
            "grafana/trove-isolate.json",
        ] {
            let path = format!("{}/../dist/{file}", env!("CARGO_MANIFEST_DIR"));
            let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let mut named = 0;
            for (i, _) in body.match_indices("trove_isolate_") {
                let name: String = body[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    known.contains(name.as_str()),
                    "{file} names {name}, not in:\n{known:?}"
                );
                named += 1;
            }
            assert!(named > 3, "{file} names only {named} series");
        }
    }
}
