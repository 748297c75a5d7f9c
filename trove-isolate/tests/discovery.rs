//! `trove-isolate check` on fixture trees of real guests (one per datastore): a `[trove]` section
//! and the management NIC's name are the whole config; every rule is printed with the file and
//! key it came from, and no password of a transport URL appears in any output.

mod common;

use common::{cli, write_config};

fn fixture(guest: &str) -> String {
    format!(
        "{}/tests/fixtures/guests/{guest}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `check` on a config of `[trove]` (and the management NIC's name); stdout and stderr.
fn check(guest: &str) -> (String, String) {
    let config = write_config(&format!(
        "[trove]\nroot = \"{}\"\n[management]\ninterface = \"ens3\"\n",
        fixture(guest)
    ));
    let out = cli(&["check", "--config", &config.display().to_string()]);
    let _ = std::fs::remove_file(&config);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "check refused {guest}:\n{stdout}\n{stderr}"
    );
    for secret in ["secret", "s3cr3t"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a password in check's output for {guest}:\n{stdout}\n{stderr}"
        );
    }
    (stdout, stderr)
}

#[test]
fn check_prints_a_mysql_guest_from_its_files() {
    let (out, err) = check("mysql");
    for want in [
        "management NIC ens3",
        "business NIC fa:16:3e:10:00:02",
        "rabbitmq 192.0.2.10:5672 (from trove-guestagent.conf [DEFAULT] transport_url)",
        "rabbitmq 192.0.2.11:5672 (from trove-guestagent.conf [DEFAULT] transport_url)",
        "registry 192.0.2.20:4000 (from trove-guestagent.conf [guest_agent] container_registry)",
        "registry 192.0.2.21:4000 (from trove-guestagent.conf [mysql] backup_docker_image)",
        "service 169.254.169.254:80 (from the metadata service (cloud-init))",
        "service 192.0.2.123:123 (from",
        "port 3306",
    ] {
        assert!(out.contains(want), "check lacks {want:?}:\n{out}");
    }
    // The database is open to any client: said on stderr.
    assert!(
        err.contains("WARNING: [business] clients is empty"),
        "{err}"
    );
}

#[test]
fn check_prints_a_mariadb_guest_with_tls_and_ipv6_brokers() {
    let (out, err) = check("mariadb");
    for want in [
        "rabbitmq [2001:db8::10]:5672",
        "rabbitmq [2001:db8::11]:5672",
        "rabbitmq 192.0.2.12:5671 (from trove-guestagent.conf [oslo_messaging_notifications] transport_url)",
        "registry [2001:db8::20]:443",
        "port 4567",
        "port 4568",
        "port 4444",
    ] {
        assert!(out.contains(want), "check lacks {want:?}:\n{out}");
    }
    // Its backup image names no registry: Docker Hub, which no rule reaches.
    assert!(
        err.contains("WARNING: ") && err.contains("mariadb/backup is on Docker Hub"),
        "{err}"
    );
}

/// The config the image element installs compiles on a guest's files.
#[test]
fn the_shipped_example_config_compiles_on_a_guest() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/config.example.toml"
    ))
    .expect("dist/config.example.toml");
    assert!(example.contains("root = \"/\""), "{example}");
    let text = example
        .replace("root = \"/\"", &format!("root = \"{}\"", fixture("mysql")))
        // This machine's namespace has more NICs than a guest: name the management NIC.
        .replace("[management]\n", "[management]\ninterface = \"ens3\"\n");
    let config = write_config(&text);
    let out = cli(&["check", "--config", &config.display().to_string()]);
    let _ = std::fs::remove_file(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("ssh_from 203.0.113.0/24"), "{stdout}");
    assert!(stdout.contains("rabbitmq 192.0.2.10:5672"), "{stdout}");
}

/// The example config ships in the image (`cargo xtask dist --config`), whose build checks it
/// offline: it passes there, off any guest, while the full check needs the guest's Trove files.
/// A key the config does not know is refused, and so is a value that needs no guest to be
/// judged wrong: shipped, it would hold every guest of the image closed at its first boot.
#[test]
fn the_example_config_passes_the_offline_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/config.example.toml");
    let out = cli(&["check", "--offline", "--config", example]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(example).expect("reading the example");
    let refused = |text: String, what: &str| {
        let config = write_config(&text);
        let out = cli(&[
            "check",
            "--offline",
            "--config",
            &config.display().to_string(),
        ]);
        let _ = std::fs::remove_file(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} passed");
        assert!(stderr.contains(what), "{stderr}");
    };
    refused(
        text.replace("[drops]", "[drops]\nevents_per_minute = 1"),
        "events_per_minute",
    );
    assert!(text.contains("mode = \"enforce\""), "{text}");
    refused(
        text.replace("mode = \"enforce\"", "mode = \"enforcing\""),
        "mode: \"enforcing\"",
    );
    refused(
        text.replace("listen = \"127.0.0.1:9477\"", "listen = \"nowhere\""),
        "[metrics] listen: \"nowhere\"",
    );
    // Without [trove], every section is judged.
    refused(
        "[business]\ninterface = \"eth1\"\ndatabase_ports = [3306]\n\
         clients = [\"198.51.100.0/33\"]\n"
            .to_string(),
        "clients[0]",
    );
}
