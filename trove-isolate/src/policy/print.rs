//! What `trove-isolate check` prints: the compiled policy, rule by rule with its origin, and
//! the warnings about what is open to any address.

use super::*;

/// A rule whose remote is a /0: who may reach what, from or to any address of a family.
pub(super) fn open_rule_warning(role: Role, rule: &Rule) -> String {
    let family = if rule.remote.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    let proto = proto_name(rule.proto);
    let any = format!("ANY {family} address ({})", rule.remote);
    let open = match (rule.direction, rule.port) {
        (Direction::Ingress, port) => {
            format!("{proto} port {port} is open to {any}; narrow it to the sources needed")
        }
        (Direction::Egress, 0) => {
            format!("the guest may reach {any} with {proto}; narrow it to the destinations needed")
        }
        (Direction::Egress, port) => format!(
            "the guest may reach {any} on {proto} port {port}; narrow it to the destinations needed"
        ),
    };
    format!("{} NIC, {}: {open}", role.name(), rule.origin())
}

pub(super) fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::ICMP => "icmp",
        proto::ICMPV6 => "icmpv6",
        _ => "?",
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "mode      {}", self.mode.name())?;
        writeln!(f, "attach    {}", self.attach.name())?;
        writeln!(f, "pin_path  {}", self.pin_path.display())?;
        write!(f, "metrics   http://{}/metrics", self.metrics.listen)?;
        if self.metrics.allow_from.is_empty() {
            writeln!(f)?;
        } else {
            let from: Vec<String> = self
                .metrics
                .allow_from
                .iter()
                .map(|n| n.to_string())
                .collect();
            writeln!(f, " (scrapers from {})", from.join(", "))?;
        }
        writeln!(
            f,
            "drops     {} events/s sampled, {} log lines/s",
            self.drops.events_per_second, self.drops.log_per_second
        )?;
        writeln!(f, "{}", crate::capacity::Capacity::for_policy(self))?;
        self.fmt_lookups(f)?;
        if !self.names.is_empty() {
            writeln!(
                f,
                "names     resolved now, looked up again as their TTL runs out:"
            )?;
            for n in &self.names {
                let addresses: Vec<String> = n.addresses.iter().map(ToString::to_string).collect();
                writeln!(
                    f,
                    "          {} = {} (TTL {} s)",
                    n.host,
                    addresses.join(", "),
                    n.ttl.as_secs()
                )?;
            }
        }
        for role in Role::ALL {
            let Some(nic) = self.nic(role) else {
                writeln!(f, "\n{}: not configured, not protected", role.name())?;
                continue;
            };
            writeln!(
                f,
                "\n{} NIC {} — {} rules (new flows; replies follow conntrack):",
                role.name(),
                nic.nic,
                nic.rules.len()
            )?;
            if nic.role == Role::Management {
                if nic.dhcp {
                    writeln!(
                        f,
                        "  dhcp    DHCPv4 68->67 and DHCPv6 546->547, stateless, \
                         broadcast/link scope only"
                    )?;
                } else {
                    writeln!(f, "  dhcp    off")?;
                }
            }
            for r in &nic.rules {
                let (dir, way) = match r.direction {
                    Direction::Ingress => ("ingress", "from"),
                    Direction::Egress => ("egress", "to"),
                };
                let port = if r.port == 0 {
                    "-".to_owned()
                } else {
                    r.port.to_string()
                };
                writeln!(
                    f,
                    "  #{:<3} {dir:<7} {:<6} {way:<4} {:<24} port {port:<5}  {}",
                    r.id,
                    proto_name(r.proto),
                    r.remote.to_string(),
                    r.origin()
                )?;
            }
        }
        Ok(())
    }
}

impl Policy {
    /// The prefix lengths each class of new flows is looked up at, and the lengths written as a
    /// longer one to save lookups.
    fn fmt_lookups(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = self.expansion();
        let lengths = self.prefix_lengths();
        let mut first = true;
        for role in Role::ALL {
            for direction in Direction::ALL {
                for (fam, name) in [(family::V4, "IPv4"), (family::V6, "IPv6")] {
                    let class = policy::class(role, direction, fam);
                    let used = &lengths[class as usize];
                    if used.is_empty() {
                        continue;
                    }
                    let at: Vec<String> = used.iter().map(|l| format!("/{l}")).collect();
                    let expanded: Vec<String> = plan
                        .expanded(class)
                        .map(|(from, to)| format!("/{from} written as /{to}"))
                        .collect();
                    let expanded = match expanded.is_empty() {
                        true => String::new(),
                        false => format!(" ({})", expanded.join(", ")),
                    };
                    let label = if first { "lookups  " } else { "         " };
                    first = false;
                    writeln!(
                        f,
                        "{label} {} {} {name}: {} per new flow, at {}{expanded}",
                        role.name(),
                        direction.name(),
                        used.len(),
                        at.join(", ")
                    )?;
                }
            }
        }
        Ok(())
    }
}
