//! The CPU quota this process runs under, if any: a container's CPU limit (cgroup v2
//! `cpu.max`, or v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`).
//!
//! Why busy polling asks: a polling thread uses CPU while a client talks, and under a
//! quota that time is charged like any other. A process that spends its quota is throttled
//! until the next period (100 ms by default), which costs far more latency than polling
//! saves. So `--busy-poll` under a quota is logged as a warning and shown in `/status`.
//!
//! How: `/proc/self/mountinfo` says where the cgroup hierarchies are mounted (and which
//! part of each a mount shows, for containers), `/proc/self/cgroup` which group the
//! process is in. The group and each of its ancestors can set a limit; the tightest one
//! holds. Anything unreadable or unexpected means no quota is known: this is advice, and
//! never stops the proxy.

use std::path::{Path, PathBuf};

/// A CPU limit found for this process.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuQuota {
    /// How many cores' worth of CPU time the group may use.
    pub cores: f64,
    /// The file that sets it.
    pub file: PathBuf,
}

/// The tightest CPU quota on this process, if one is set.
pub fn cpu_quota() -> Option<CpuQuota> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    quota_from(&mountinfo, &cgroup, Path::new("/"))
}

/// The tightest quota given the texts of `/proc/self/mountinfo` and `/proc/self/cgroup`,
/// with the mount points read under `root` (`/`, or a test's directory).
fn quota_from(mountinfo: &str, cgroup: &str, root: &Path) -> Option<CpuQuota> {
    let mut tightest: Option<CpuQuota> = None;
    for mount in mountinfo.lines().filter_map(CgroupMount::parse) {
        let Some(group) = group_path(cgroup, mount.version) else {
            continue;
        };
        // The group must lie inside what the mount shows ("/docker/ab" is not inside
        // "/docker/a").
        let relative = match mount.root.as_str() {
            "/" => Some(group.as_str()),
            shown => group
                .strip_prefix(shown)
                .filter(|rest| rest.is_empty() || rest.starts_with('/')),
        };
        let Some(relative) = relative else {
            continue;
        };
        let top = root.join(mount.point.trim_start_matches('/'));
        let mut dir = top.join(relative.trim_start_matches('/'));
        loop {
            if let Some(quota) = read_quota(&dir, mount.version)
                && tightest.as_ref().is_none_or(|t| quota.cores < t.cores)
            {
                tightest = Some(quota);
            }
            if dir == top || !dir.pop() {
                break;
            }
        }
    }
    tightest
}

/// Which cgroup hierarchy a mount is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    /// cgroup v1, the `cpu` controller's hierarchy.
    V1,
    /// cgroup v2, the unified hierarchy.
    V2,
}

/// A mount of a cgroup hierarchy that can limit CPU.
struct CgroupMount {
    /// v1 or v2.
    version: Version,
    /// The part of the hierarchy the mount shows (`/` but in some containers).
    root: String,
    /// Where it is mounted.
    point: String,
}

impl CgroupMount {
    /// A `/proc/self/mountinfo` line, if it mounts the v2 hierarchy or v1's `cpu`
    /// controller: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER`.
    fn parse(line: &str) -> Option<CgroupMount> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let super_options = after.nth(1).unwrap_or("");
        let version = match fstype {
            "cgroup2" => Version::V2,
            "cgroup" if super_options.split(',').any(|o| o == "cpu") => Version::V1,
            _ => return None,
        };
        Some(CgroupMount {
            version,
            root: unescape(root),
            point: unescape(point),
        })
    }
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// This process's group in a hierarchy, from `/proc/self/cgroup`
/// (`ID:CONTROLLERS:PATH`; v2's line is `0::PATH`).
fn group_path(cgroup: &str, version: Version) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "cpu"),
        };
        wanted.then(|| path.to_string())
    })
}

/// The limit a group's directory sets, if it sets one.
fn read_quota(dir: &Path, version: Version) -> Option<CpuQuota> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let (quota, period, file) = match version {
        Version::V2 => {
            // "max 100000" (no limit) or "150000 100000".
            let text = read("cpu.max")?;
            let mut words = text.split_whitespace();
            let quota = words.next()?.parse::<f64>().ok()?;
            let period = words.next()?.parse::<f64>().ok()?;
            (quota, period, dir.join("cpu.max"))
        }
        Version::V1 => {
            // -1: no limit.
            let quota = read("cpu.cfs_quota_us")?.trim().parse::<f64>().ok()?;
            let period = read("cpu.cfs_period_us")?.trim().parse::<f64>().ok()?;
            (quota, period, dir.join("cpu.cfs_quota_us"))
        }
    };
    (quota > 0.0 && period > 0.0).then(|| CpuQuota {
        cores: quota / period,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write `text` to `path` under `root`, making its directories.
    fn put(root: &Path, path: &str, text: &str) {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("dirs");
        std::fs::write(file, text).expect("write");
    }

    const V2_MOUNT: &str =
        "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn a_v2_limit_on_the_group_or_an_ancestor_is_found_and_the_tightest_wins() {
        let root = tempfile::tempdir().expect("dir");
        let cgroup = "0::/kubepods/pod1/app\n";
        put(
            root.path(),
            "sys/fs/cgroup/kubepods/pod1/app/cpu.max",
            "max 100000\n",
        );
        assert_eq!(quota_from(V2_MOUNT, cgroup, root.path()), None);

        put(
            root.path(),
            "sys/fs/cgroup/kubepods/pod1/cpu.max",
            "150000 100000\n",
        );
        put(
            root.path(),
            "sys/fs/cgroup/kubepods/cpu.max",
            "400000 100000\n",
        );
        let quota = quota_from(V2_MOUNT, cgroup, root.path()).expect("a quota");
        assert_eq!(quota.cores, 1.5);
        assert!(
            quota.file.ends_with("kubepods/pod1/cpu.max"),
            "{:?}",
            quota.file
        );
    }

    #[test]
    fn a_container_sees_its_own_group_at_the_mount_root() {
        // cgroup namespaces: /proc/self/cgroup says "/", the mount shows the container's
        // group as its root.
        let root = tempfile::tempdir().expect("dir");
        put(root.path(), "sys/fs/cgroup/cpu.max", "50000 100000\n");
        let quota = quota_from(V2_MOUNT, "0::/\n", root.path()).expect("a quota");
        assert_eq!(quota.cores, 0.5);
    }

    #[test]
    fn a_v1_cpu_hierarchy_is_read_and_minus_one_means_no_limit() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let cgroup = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n";
        let root = tempfile::tempdir().expect("dir");
        put(
            root.path(),
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
            "-1\n",
        );
        put(
            root.path(),
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
            "100000\n",
        );
        assert_eq!(quota_from(mountinfo, cgroup, root.path()), None);

        put(
            root.path(),
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
            "200000\n",
        );
        let quota = quota_from(mountinfo, cgroup, root.path()).expect("a quota");
        assert_eq!(quota.cores, 2.0);
    }

    #[test]
    fn a_mount_of_part_of_the_hierarchy_maps_the_group_below_its_root() {
        // Docker without cgroup namespaces on v1: the mount's root is the container's
        // group, and /proc/self/cgroup names it in full.
        let mountinfo = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n";
        let root = tempfile::tempdir().expect("dir");
        put(root.path(), "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "25000\n");
        put(
            root.path(),
            "sys/fs/cgroup/cpu/cpu.cfs_period_us",
            "100000\n",
        );
        let quota = quota_from(mountinfo, "3:cpu:/docker/abc\n", root.path()).expect("a quota");
        assert_eq!(quota.cores, 0.25);
        // A group outside what the mount shows is not looked for.
        assert_eq!(quota_from(mountinfo, "3:cpu:/other\n", root.path()), None);
        assert_eq!(
            quota_from(mountinfo, "3:cpu:/docker/abcd\n", root.path()),
            None
        );
    }

    #[test]
    fn garbage_means_no_quota_known() {
        let root = tempfile::tempdir().expect("dir");
        put(root.path(), "sys/fs/cgroup/cpu.max", "lots\n");
        assert_eq!(quota_from(V2_MOUNT, "0::/\n", root.path()), None);
        assert_eq!(quota_from("nonsense\n", "0::/\n", root.path()), None);
        assert_eq!(quota_from(V2_MOUNT, "", root.path()), None);
        assert_eq!(quota_from("", "", root.path()), None);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\x"), r"/odd\x");
    }
}
