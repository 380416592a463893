//! `cutover migrate --from HOST:PORT --to FILE[:POOL]`: the offline copy of one Redis into a
//! pool, placed as nutcracker would place it; resumed after being killed; and its errors.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::compare::assert_same;
use support::{RedisServer, cutover_bin, redis_servers, wait_for};

/// Fill `source` with `n` keys of every type, a fifth with TTLs, some binary, one large.
fn fill(source: &RedisServer, n: u64) {
    let mut conn = source.client();
    let mut pipe = redis::pipe();
    for i in 0..n {
        match i % 5 {
            0 => pipe
                .cmd("SET")
                .arg(format!("s:{i}"))
                .arg(vec![b'x'; (i % 900) as usize])
                .ignore(),
            1 => pipe
                .cmd("HSET")
                .arg(format!("h:{i}"))
                .arg("a")
                .arg(i)
                .arg("b")
                .arg("c")
                .ignore(),
            2 => pipe
                .cmd("RPUSH")
                .arg(format!("l:{i}"))
                .arg(i)
                .arg("y")
                .ignore(),
            3 => pipe
                .cmd("SADD")
                .arg(vec![0xff, (i % 251) as u8, b'\r', b'\n', i as u8])
                .arg(i)
                .ignore(),
            _ => pipe
                .cmd("ZADD")
                .arg(format!("z:{i}"))
                .arg(i)
                .arg("m")
                .ignore(),
        };
        if i % 5 == 0 {
            pipe.cmd("EXPIRE").arg(format!("s:{i}")).arg(5000).ignore();
        }
    }
    pipe.cmd("SET")
        .arg("big")
        .arg(vec![b'b'; 2_000_000])
        .ignore();
    pipe.query::<()>(&mut conn).expect("fill");
}

/// A target-only config for `targets`.
fn fleet(targets: &[RedisServer], dir: &std::path::Path) -> std::path::PathBuf {
    let mut text =
        String::from("fleet:\n  redis: true\n  hash: murmur\n  distribution: ketama\n  servers:\n");
    for (i, t) in targets.iter().enumerate() {
        text.push_str(&format!("   - {}:1 fleet{i}\n", t.addr()));
    }
    let path = dir.join("fleet.yml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// `cutover migrate`'s arguments from `source` into the pool of `config`, keeping its
/// progress in `checkpoint`, 100 keys a SCAN, then `extra`.
fn checkpointed(
    source: &RedisServer,
    config: &std::path::Path,
    checkpoint: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = ["--from", &source.addr(), "--to"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.push(config.display().to_string());
    args.push("--checkpoint".into());
    args.push(checkpoint.display().to_string());
    args.extend(["--scan-count", "100"].iter().map(|a| a.to_string()));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Start `cutover migrate` from `source` into the pool of `config`, keeping its progress
/// in `checkpoint`, with `extra` arguments; its standard error is kept for the test.
fn spawn_job(
    source: &RedisServer,
    config: &std::path::Path,
    checkpoint: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    Command::new(cutover_bin())
        .arg("migrate")
        .args(checkpointed(source, config, checkpoint, extra))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cutover migrate")
}

/// Wait until `checkpoint` shows the scan of `job` part-way (however slow the machine);
/// a job that ends first fails the test with what it printed.
fn wait_part_way(checkpoint: &std::path::Path, job: &mut std::process::Child) {
    wait_for("a part-way checkpoint", Duration::from_secs(60), || {
        if let Ok(Some(status)) = job.try_wait() {
            let mut said = String::new();
            if let Some(mut stderr) = job.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
            }
            panic!("the job ended before it was part-way ({status}): {said}");
        }
        std::fs::read_to_string(checkpoint).is_ok_and(|state| {
            state
                .lines()
                .any(|l| l.starts_with("server 0 0 ") && l != "server 0 0 0")
        })
    });
}

fn migrate(args: &[&str]) -> (bool, String) {
    let out = Command::new(cutover_bin())
        .arg("migrate")
        .args(args)
        .output()
        .expect("run cutover migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn copies_every_key_with_its_ttl_to_the_right_server() {
    let source = RedisServer::start();
    let targets = redis_servers(3);
    fill(&source, 5000);
    let dir = tempfile::tempdir().expect("dir");
    let config = fleet(&targets, dir.path());
    let (ok, output) = migrate(&[
        "--from",
        &source.addr(),
        "--to",
        &config.display().to_string(),
    ]);
    assert!(ok, "{output}");
    assert!(
        output.contains("5001 keys scanned, 5001 copied"),
        "{output}"
    );
    assert_same(&source, &targets);
    // Placed by the pool's own placement: each target holds only keys it owns.
    let parsed = cutover::config::Config::load_servers_only(&config).expect("config");
    let placement = parsed.pools[0].placement();
    for (index, target) in targets.iter().enumerate() {
        let keys = target.keys();
        assert!(!keys.is_empty(), "keys spread over every server");
        assert!(
            keys.iter().all(|k| placement.server_for(k) == Some(index)),
            "server {index} holds another server's key"
        );
    }
}

#[test]
fn resumes_from_its_checkpoint_after_being_killed() {
    let source = RedisServer::start();
    let targets = redis_servers(3);
    fill(&source, 20_000);
    let dir = tempfile::tempdir().expect("dir");
    let config = fleet(&targets, dir.path());
    let checkpoint = dir.path().join("job.state");
    // A slow first run, killed once its checkpoint shows a part-way cursor.
    let mut first = spawn_job(&source, &config, &checkpoint, &["--rate", "4000"]);
    wait_part_way(&checkpoint, &mut first);
    let _ = first.kill();
    let _ = first.wait();
    let state = std::fs::read_to_string(&checkpoint).expect("a checkpoint was written");
    assert!(state.contains("clean false"), "{state}");
    let cursor = state
        .lines()
        .find(|l| l.starts_with("server 0 "))
        .expect("server line")
        .to_string();
    assert!(
        cursor.starts_with("server 0 0 ") && cursor != "server 0 0 0",
        "part-way: {cursor}"
    );
    let copied_before: usize = targets.iter().map(|t| t.keys().len()).sum();
    assert!(
        copied_before > 0 && copied_before < 20_001,
        "{copied_before}"
    );

    // The second run resumes and finishes.
    let args = checkpointed(&source, &config, &checkpoint, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, output) = migrate(&args);
    assert!(ok, "{output}");
    let state = std::fs::read_to_string(&checkpoint).expect("checkpoint");
    assert!(
        state.contains("clean true") && state.contains("server 0 1 0"),
        "{state}"
    );
    assert_same(&source, &targets);
}

#[test]
fn a_target_server_lost_part_way_stops_the_job_and_a_rerun_finishes() {
    let source = RedisServer::start();
    let mut targets = redis_servers(3);
    fill(&source, 5_000);
    let dir = tempfile::tempdir().expect("dir");
    let config = fleet(&targets, dir.path());
    let checkpoint = dir.path().join("job.state");
    let mut first = spawn_job(
        &source,
        &config,
        &checkpoint,
        &["--rate", "1500", "--give-up-after", "3"],
    );
    wait_part_way(&checkpoint, &mut first);
    // One target server goes away: the job stops, says why, and says
    // what to do.
    targets[1].shut_down();
    let out = first.wait_with_output().expect("the first run ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no key scanned or copied for 3 s")
            && stderr.contains("target server fleet1: ")
            && stderr.contains("run the same command again"),
        "{stderr}"
    );
    // Back, but empty (its saved keys lost, as after a crash without persistence), and
    // the same command finishes the job: every key, the ones its keys queued and those
    // marked dirty when the first run stopped included, and (rule 17: its run_id changed
    // since the checkpoint) those the server held before it went away.
    targets[1].restart_empty();
    let rerun = checkpointed(&source, &config, &checkpoint, &[]);
    let rerun: Vec<&str> = rerun.iter().map(String::as_str).collect();
    let (ok, output) = migrate(&rerun);
    assert!(ok, "{output}");
    assert_same(&source, &targets);
}

#[test]
fn errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("dir");
    let targets = redis_servers(1);
    let config = fleet(&targets, dir.path());
    let (ok, output) = migrate(&[
        "--from",
        "127.0.0.1:1",
        "--to",
        &config.display().to_string(),
    ]);
    assert!(
        !ok && output.contains("cannot reach the source 127.0.0.1:1"),
        "{output}"
    );
    let two = dir.path().join("two.yml");
    std::fs::write(&two, "a:\n  redis: true\n  servers:\n   - 127.0.0.1:7001:1\nb:\n  redis: true\n  servers:\n   - 127.0.0.1:7002:1\n").expect("write");
    let (ok, output) = migrate(&[
        "--from",
        &targets[0].addr(),
        "--to",
        &two.display().to_string(),
    ]);
    assert!(
        !ok && output.contains("several pools") && output.contains(":POOL"),
        "{output}"
    );
    let (ok, output) = migrate(&[
        "--from",
        &targets[0].addr(),
        "--to",
        &format!("{}:nope", two.display()),
    ]);
    assert!(!ok && output.contains("no pool 'nope'"), "{output}");
    let (ok, output) = migrate(&[
        "--from",
        "not an address",
        "--to",
        &config.display().to_string(),
    ]);
    assert!(!ok && output.contains("--from"), "{output}");
    // A target server that does not answer at the start: said at once, by name.
    let dead = support::free_port();
    let half_dead = dir.path().join("half.yml");
    std::fs::write(
        &half_dead,
        format!(
            "fleet:\n  redis: true\n  servers:\n   - {}:1\n   - 127.0.0.1:{dead}:1\n",
            targets[0].addr()
        ),
    )
    .expect("write");
    let (ok, output) = migrate(&[
        "--from",
        &targets[0].addr(),
        "--to",
        &half_dead.display().to_string(),
    ]);
    assert!(
        !ok && output.contains(&format!(
            "server 127.0.0.1:{dead} of pool 'fleet' does not answer (Connection refused): bring it back first"
        )),
        "{output}"
    );
    // So does `cutover verify` (every key of that server would look different).
    let out = Command::new(cutover_bin())
        .args(["verify", "--from", &targets[0].addr(), "--to"])
        .arg(&half_dead)
        .output()
        .expect("run cutover verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "server 127.0.0.1:{dead} of pool 'fleet' does not answer"
            )),
        "{stderr}"
    );
}

/// Rule 19 offline: a target that fills up and evicts keys during the job makes it fail,
/// naming the server, instead of finishing "successfully" without those keys.
#[test]
fn a_target_that_evicts_during_the_job_fails_it() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let value = vec![b'v'; 1000];
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(&value).ignore();
    }
    pipe.query::<()>(&mut source.client()).expect("fill");
    // Room for part of the data only.
    target.evict_beyond(1_000_000);
    let dir = tempfile::tempdir().expect("dir");
    let config = fleet(std::slice::from_ref(&target), dir.path());
    let (ok, output) = migrate(&[
        "--from",
        &source.addr(),
        "--to",
        &config.display().to_string(),
    ]);
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!("target server {} evicted", "fleet0"))
            && output.contains("(its maxmemory is full"),
        "{output}"
    );
}
