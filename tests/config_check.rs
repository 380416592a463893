//! `cutover -t` against `nutcracker -t` on the same files: the same verdict on every case
//! (except the documented differences), and cutover's message names the line and the key.

mod support;

use std::path::Path;
use std::process::Command;

use cutover::config::Config;
use support::cutover_bin;

/// What a case should give.
enum Expect {
    /// Both accept.
    Ok,
    /// Both reject; cutover's output contains `file:LINE:` and each of the phrases.
    Err(usize, &'static [&'static str]),
    /// A documented difference: nutcracker accepts, cutover rejects with this line and phrase.
    Stricter(usize, &'static [&'static str]),
    /// A documented difference: nutcracker rejects, cutover accepts.
    Looser,
}

const POOL: &str = "p:\n  listen: 127.0.0.1:22121\n";
const SERVERS: &str = "  servers:\n   - 127.0.0.1:6379:1\n";

fn cases() -> Vec<(&'static str, String, Expect)> {
    use Expect::*;
    let with = |middle: &str| format!("{POOL}{middle}{SERVERS}");
    let servers = |lines: &str| format!("{POOL}  servers:\n{lines}");
    vec![
        ("minimal", with(""), Ok),
        (
            "every key",
            with(
                "  hash: murmur\n  hash_tag: \"{}\"\n  distribution: modula\n  timeout: 400\n  backlog: 1024\n  client_connections: 10\n  redis: true\n  redis_auth: pw\n  redis_db: 3\n  preconnect: true\n  auto_eject_hosts: true\n  server_connections: 2\n  server_retry_timeout: 2000\n  server_failure_limit: 3\n  tcpkeepalive: true\n",
            ),
            Ok,
        ),
        ("quoted true", with("  redis: \"true\"\n"), Ok),
        ("timeout 0", with("  timeout: 0\n"), Ok),
        (
            "ipv6 listen",
            format!("p:\n  listen: ::1:22121\n{SERVERS}"),
            Ok,
        ),
        (
            "unix listen",
            format!("p:\n  listen: /tmp/x.sock 0666\n{SERVERS}"),
            Ok,
        ),
        ("unix server", servers("   - /tmp/r.sock:1\n"), Ok),
        (
            "same host, other names",
            servers("   - 127.0.0.1:6379:1 a\n   - 127.0.0.1:6379:1 b\n"),
            Ok,
        ),
        (
            "port 11211",
            servers("   - 127.0.0.1:11211:1\n   - 127.0.0.1:11211:2 x\n"),
            Ok,
        ),
        (
            "unknown key",
            with("  distrbution: ketama\n"),
            Err(
                3,
                &["distrbution", "unknown", "did you mean \"distribution\""],
            ),
        ),
        (
            "duplicate key",
            with("  hash: md5\n  hash: md5\n"),
            Err(4, &["hash", "duplicate", "line 3"]),
        ),
        (
            "duplicate pool",
            format!("{POOL}{SERVERS}{POOL}{SERVERS}"),
            Err(5, &["pool 'p'", "duplicate pool"]),
        ),
        (
            "duplicate listen",
            format!("{POOL}{SERVERS}q:\n  listen: 127.0.0.1:22121\n{SERVERS}"),
            Err(5, &["pool 'q'", "listen", "already uses"]),
        ),
        (
            "weight 0",
            servers("   - 127.0.0.1:6379:0\n"),
            Err(4, &["servers", "zero weight"]),
        ),
        (
            "server_connections 0",
            with("  server_connections: 0\n"),
            Err(3, &["server_connections", "cannot be 0"]),
        ),
        (
            "hash_tag 3 bytes",
            with("  hash_tag: \"{}}\"\n"),
            Err(3, &["hash_tag", "two characters"]),
        ),
        (
            "hash_tag empty",
            with("  hash_tag: \"\"\n"),
            Err(3, &["hash_tag", "two characters"]),
        ),
        (
            "redis_auth without redis",
            with("  redis_auth: x\n"),
            Err(3, &["redis_auth", "redis: true"]),
        ),
        (
            "unknown hash",
            with("  hash: sha1\n"),
            Err(3, &["hash", "not a valid hash"]),
        ),
        (
            "empty hash",
            with("  hash:\n"),
            Err(3, &["hash", "not a valid hash"]),
        ),
        (
            "unknown distribution",
            with("  distribution: x\n"),
            Err(3, &["distribution", "not a valid distribution"]),
        ),
        (
            "yes for a bool",
            with("  redis: yes\n"),
            Err(3, &["redis", "\"yes\" is not \"true\" or \"false\""]),
        ),
        (
            "negative timeout",
            with("  timeout: -1\n"),
            Err(3, &["timeout", "not a number"]),
        ),
        (
            "non-numeric backlog",
            with("  backlog: 1k\n"),
            Err(3, &["backlog", "not a number"]),
        ),
        (
            "empty servers",
            format!("{POOL}  servers:\n"),
            Err(3, &["servers", "empty"]),
        ),
        (
            "no servers",
            POOL.to_string(),
            Err(1, &["pool 'p'", "servers"]),
        ),
        (
            "server without port",
            servers("   - 127.0.0.1:6379\n"),
            Err(4, &["servers", "format"]),
        ),
        (
            "server name with space",
            servers("   - 127.0.0.1:6379:1 my server\n"),
            Err(4, &["servers", "invalid weight"]),
        ),
        (
            "same server name",
            servers("   - 127.0.0.1:6379:1\n   - 127.0.0.1:6379:2\n"),
            Err(5, &["servers", "same name", "line 4"]),
        ),
        (
            "socket path with colon",
            servers("   - /tmp/r:x.sock:1\n"),
            Err(4, &["servers", "may not contain ':'"]),
        ),
        (
            "a mapping among servers",
            servers("   - 127.0.0.1:6379:1\n   - a: b\n"),
            Err(5, &["servers", "one line of text"]),
        ),
        (
            "no listen",
            format!("p:\n{SERVERS}"),
            Err(1, &["pool 'p'", "listen"]),
        ),
        (
            "listen port out of range",
            format!("p:\n  listen: 127.0.0.1:99999\n{SERVERS}"),
            Err(2, &["listen", "invalid port"]),
        ),
        (
            "unresolvable listen",
            format!("p:\n  listen: no.such.host.invalid:22121\n{SERVERS}"),
            Err(2, &["listen", "cannot resolve"]),
        ),
        (
            "bracketed ipv6",
            format!("p:\n  listen: \"[::1]:22121\"\n{SERVERS}"),
            Err(2, &["listen", "cannot resolve"]),
        ),
        (
            "document marker",
            format!("---\n{POOL}{SERVERS}"),
            Err(1, &["'---'"]),
        ),
        (
            "two documents",
            format!("{POOL}{SERVERS}---\nq: 1\n"),
            Err(5, &["more than one YAML document"]),
        ),
        (
            "flow sequence",
            format!("{POOL}  servers: [127.0.0.1:6379:1]\n"),
            Err(3, &["flow collections"]),
        ),
        ("anchor", with("  hash: &h md5\n"), Err(3, &["anchors"])),
        ("tag", with("  hash: !!str md5\n"), Err(3, &["tags"])),
        (
            "nested mapping",
            with("  hash:\n    a: b\n"),
            Err(4, &["hash", "single value"]),
        ),
        (
            "sentinels (documented, not in 0.5.0)",
            with("  sentinels: x\n"),
            Err(3, &["sentinels", "unknown"]),
        ),
        ("empty file", String::new(), Err(1, &["no pools"])),
        (
            "a scalar file",
            "hello\n".to_string(),
            Err(1, &["mapping of pool names"]),
        ),
        (
            "bad indentation",
            format!("{POOL}  hash: md5\n    bad: 1\n"),
            Err(4, &["YAML syntax error"]),
        ),
        (
            "empty server host",
            servers("   - :6379:1\n"),
            Stricter(4, &["servers", "empty host"]),
        ),
        (
            "listen perm not octal",
            format!("p:\n  listen: /tmp/x.sock 0999\n{SERVERS}"),
            Stricter(2, &["listen", "invalid file permission"]),
        ),
        (
            "listen perm with junk",
            format!("p:\n  listen: /tmp/x.sock 0666x\n{SERVERS}"),
            Stricter(2, &["listen", "invalid file permission"]),
        ),
        (
            "reuseport from nutcracker HEAD",
            with("  reuseport: true\n"),
            Looser,
        ),
    ]
}

/// Run `program -t -c file`; true when it accepts the file. Returns the combined output.
fn test_conf(program: &Path, file: &Path) -> (bool, String) {
    let out = Command::new(program)
        .arg("-t")
        .arg("-c")
        .arg(file)
        .output()
        .expect("run -t");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn verdicts_match_nutcracker_and_messages_say_where() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for (i, (name, text, expect)) in cases().into_iter().enumerate() {
        let file = dir.path().join(format!("case{i}.yml"));
        std::fs::write(&file, &text).expect("write case");
        let (nc_ok, _) = test_conf(Path::new("nutcracker"), &file);
        let (cut_ok, output) = test_conf(&cutover_bin(), &file);
        let located = |line: usize| format!("case{i}.yml:{line}:");
        let problem = match expect {
            Expect::Ok if !(nc_ok && cut_ok) => Some(format!(
                "both should accept (nutcracker {nc_ok}, cutover {cut_ok}): {output}"
            )),
            Expect::Looser if nc_ok || !cut_ok => Some(format!(
                "nutcracker should reject, cutover accept: {output}"
            )),
            Expect::Err(line, phrases) | Expect::Stricter(line, phrases) => {
                let nutcracker_should_accept = matches!(expect, Expect::Stricter(..));
                if cut_ok || nc_ok != nutcracker_should_accept {
                    Some(format!(
                        "verdicts: nutcracker {nc_ok}, cutover {cut_ok}: {output}"
                    ))
                } else if !output.contains(&located(line))
                    || phrases.iter().any(|p| !output.contains(p))
                {
                    Some(format!(
                        "message should contain {} and {phrases:?}: {output}",
                        located(line)
                    ))
                } else if !output.contains("syntax is invalid") {
                    Some(format!("no verdict line: {output}"))
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(problem) = problem {
            failures.push(format!("[{name}] {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_problem_is_listed_at_once() {
    let text = "a:\n  listen: 127.0.0.1:1\n  hash: nope\n  redis: yes\n  servers:\n   - 127.0.0.1:6379:0\n   - 127.0.0.1:6380\nb:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:6379:1\n";
    let err = Config::parse(text, "many.yml").expect_err("invalid");
    let lines: Vec<usize> = err.problems().iter().map(|p| p.line).collect();
    assert_eq!(lines, [3, 4, 6, 7, 8], "{err}");
    let rendered = err.to_string();
    assert!(
        rendered.contains("many.yml:3: pool 'a': hash:"),
        "{rendered}"
    );
    assert!(
        rendered.contains("many.yml:8: pool 'b': listen:"),
        "{rendered}"
    );
}

#[test]
fn cutover_t_says_ok_and_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("good.yml");
    std::fs::write(&file, format!("{POOL}{SERVERS}")).expect("write");
    let (ok, output) = test_conf(&cutover_bin(), &file);
    assert!(ok, "{output}");
    assert!(output.contains("syntax is ok"), "{output}");
}

#[test]
fn missing_unreadable_and_binary_files_say_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, output) = test_conf(&cutover_bin(), &dir.path().join("absent.yml"));
    assert!(
        !ok && output.contains("cannot read")
            && output.contains("absent.yml")
            && output.contains("No such file"),
        "{output}"
    );
    let (ok, output) = test_conf(&cutover_bin(), dir.path());
    assert!(
        !ok && output.contains("cannot read") && output.contains("directory"),
        "{output}"
    );
    let binary = dir.path().join("binary.yml");
    std::fs::write(&binary, b"p:\n  listen: \xff\xfe\n").expect("write");
    let (ok, output) = test_conf(&cutover_bin(), &binary);
    assert!(
        !ok && output.contains("not UTF-8") && output.contains("line 2, byte offset 13"),
        "{output}"
    );
}

#[test]
fn pools_and_servers_come_out_sorted_like_nutcracker() {
    let text = "main:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:1:1 zeta\n   - 127.0.0.1:2:1 alpha\n   - 127.0.0.1:3:1 mu\n   - 127.0.0.1:4:1 server10\n   - 127.0.0.1:5:1 b\ndbpool:\n  listen: 127.0.0.1:2\n  servers:\n   - 127.0.0.1:6:1\nauthpool:\n  listen: 127.0.0.1:3\n  servers:\n   - 127.0.0.1:7:1\ndeadpool:\n  listen: 127.0.0.1:4\n  servers:\n   - 127.0.0.1:8:1\n";
    let config = Config::parse(text, "sorted.yml").expect("valid");
    let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pools, ["main", "dbpool", "authpool", "deadpool"]);
    let servers: Vec<&str> = config.pools[0]
        .servers
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(servers, ["b", "mu", "zeta", "alpha", "server10"]);
}

#[test]
fn defaults_are_nutcrackers() {
    let config = Config::parse(&format!("{POOL}{SERVERS}"), "d.yml").expect("valid");
    let pool = &config.pools[0];
    assert_eq!(pool.hash.name(), "fnv1a_64");
    assert_eq!(pool.distribution.name(), "ketama");
    assert_eq!(pool.timeout, None);
    assert_eq!(
        (
            pool.backlog,
            pool.server_connections,
            pool.server_failure_limit,
            pool.redis_db
        ),
        (512, 1, 2, 0)
    );
    assert_eq!(
        pool.server_retry_timeout,
        std::time::Duration::from_secs(30)
    );
    assert!(!pool.redis && !pool.preconnect && !pool.auto_eject_hosts && !pool.tcpkeepalive);
    assert_eq!(pool.hash_tag, None);
    assert_eq!(pool.migration, None);
}
