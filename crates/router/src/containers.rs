//! What a container engine needs to give a container fv0: a CDI spec
//! (`flowverbs cdi`) and an OCI seccomp profile that hides the kernel's
//! RDMA netlink (`flowverbs seccomp-profile`). Pure functions over JSON;
//! the command gathers the facts (paths, the router's NIC, podman's
//! version) and writes the result.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The CDI kind of fv0: `--device flowverbs.io/rdma=fv0`.
pub const CDI_KIND: &str = "flowverbs.io/rdma";
/// Where the provider appears inside every container (outside any
/// distribution's own library folders, so that no image file is hidden).
pub const CONTAINER_PROVIDER_DIR: &str = "/usr/lib/flowverbs";
/// `socket(AF_NETLINK, …, NETLINK_RDMA)` is what the rule denies.
pub const NETLINK_RDMA: u64 = 20;
const AF_NETLINK: u64 = 16;
/// What the denied socket call returns: libibverbs then reads `SYSFS_PATH`.
pub const RULE_ERRNO: u64 = libc::EPROTONOSUPPORT as u64;

/// The newest CDI spec version the given `podman --version` output
/// accepts: podman before 4.8 (Debian 12 has 4.3) rejects 0.6.0 (at
/// debug log level only) and takes 0.5.0; the spec uses nothing newer than
/// 0.5.0, so 0.5.0 is also the answer when podman's version is unknown.
pub fn cdi_version_for_podman(version_output: Option<&str>) -> &'static str {
    let parsed = version_output.and_then(|out| {
        let v = out.split_whitespace().last()?;
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next()?.parse().ok()?;
        Some((major, minor))
    });
    match parsed {
        Some(v) if v >= (4, 8) => "0.6.0",
        _ => "0.5.0",
    }
}

/// A real RDMA device a container also needs in semi mode over a NIC:
/// its node and libibverbs' provider for it (library and driver file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VendorDevice {
    /// `/dev/infiniband/uverbsN`.
    pub node: PathBuf,
    /// The provider library as the host has it, e.g.
    /// `/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so`; bound at
    /// the same path in the container.
    pub library: Option<PathBuf>,
    /// `/etc/libibverbs.d/<driver>.driver`, bound at the same path.
    pub driver_file: Option<PathBuf>,
}

/// The facts a CDI spec is made of.
#[derive(Clone, Debug)]
pub struct CdiInput {
    pub cdi_version: String,
    /// The router's runtime directory (canonical): bound recursively at
    /// the same path (the FUSE mount inside it must come along).
    pub runtime_dir: PathBuf,
    /// `/dev/infiniband/uverbs_fv…` of the router.
    pub dev_node: PathBuf,
    /// The provider on the host (`flowverbs install`'s copy, or given).
    pub provider: PathBuf,
    /// Semi mode over a NIC: the real devices.
    pub vendor: Vec<VendorDevice>,
    /// The router's rdma_cm node, if it serves one: the container sees it
    /// at `/dev/infiniband/rdma_cm`, where librdmacm opens it, whatever
    /// its name on the host.
    pub rdma_cm: Option<PathBuf>,
}

/// The CDI spec: device `fv0` of kind [`CDI_KIND`]. Every container gets
/// the same edits: the per-namespace GID comes from the router's FUSE
/// tree (`RUNTIME_DIR/fuse/sysfs`), which answers each reader with its own
/// network namespace's view.
pub fn cdi_spec(input: &CdiInput) -> Value {
    let dir = input.runtime_dir.to_string_lossy();
    let provider_in = Path::new(CONTAINER_PROVIDER_DIR).join("libflowverbs-rdmav34.so");
    let mut nodes = vec![json!({ "path": input.dev_node.to_string_lossy() })];
    if let Some(cm) = &input.rdma_cm {
        nodes.push(json!({
            "path": "/dev/infiniband/rdma_cm",
            "hostPath": cm.to_string_lossy(),
        }));
    }
    let mut mounts = vec![
        // rbind, not bind: the FUSE mount at RUNTIME_DIR/fuse (completion
        // channels and the device tree) is a mount of its own.
        json!({
            "hostPath": dir,
            "containerPath": dir,
            "options": ["rbind", "rw", "nosuid", "nodev"],
        }),
        json!({
            "hostPath": input.provider.to_string_lossy(),
            "containerPath": provider_in.to_string_lossy(),
            "options": ["bind", "ro", "nosuid", "nodev"],
        }),
    ];
    for v in &input.vendor {
        nodes.push(json!({ "path": v.node.to_string_lossy() }));
        for f in v.library.iter().chain(&v.driver_file) {
            mounts.push(json!({
                "hostPath": f.to_string_lossy(),
                "containerPath": f.to_string_lossy(),
                "options": ["bind", "ro", "nosuid", "nodev"],
            }));
        }
    }
    json!({
        "cdiVersion": input.cdi_version,
        "kind": CDI_KIND,
        "devices": [{
            "name": crate::sysfs::IBDEV,
            "containerEdits": {
                "env": [
                    format!("SYSFS_PATH={dir}/fuse/sysfs"),
                    format!("RDMAV_DRIVERS={CONTAINER_PROVIDER_DIR}/libflowverbs"),
                ],
                "deviceNodes": nodes,
                "mounts": mounts,
            },
        }],
    })
}

/// One OCI seccomp argument condition.
fn cond(index: u64, op: &str, value: u64, value_two: u64) -> Value {
    json!({ "index": index, "value": value, "valueTwo": value_two, "op": op })
}

/// Conditions, each on argument `index`, any one of which holds exactly
/// when the argument is none of `excluded` (sorted, distinct): ranges
/// below, between and above them as `LT`, aligned `MASKED_EQ` blocks and
/// `GT`. Each goes into a rule of its own, because runc turns several
/// conditions on one argument into separate rules (any of which allows),
/// so "a != 9 and a != 20" cannot be written as one rule.
fn outside(index: u64, excluded: &[u64]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut lo = 0u64;
    for &x in excluded {
        if x == lo && lo == 0 {
            lo = 1;
            continue;
        }
        if lo == 0 {
            out.push(cond(index, "SCMP_CMP_LT", x, 0));
        } else {
            // [lo, x) as aligned power-of-two blocks.
            let mut a = lo;
            while a < x {
                let mut size = if a == 0 {
                    1u64 << 63
                } else {
                    1u64 << a.trailing_zeros()
                };
                while a + size > x {
                    size >>= 1;
                }
                out.push(cond(index, "SCMP_CMP_MASKED_EQ", !(size - 1), a));
                a += size;
            }
        }
        lo = x.saturating_add(1);
    }
    if let Some(&last) = excluded.last() {
        if last < u64::MAX {
            out.push(cond(index, "SCMP_CMP_GT", last, 0));
        }
    }
    out
}

/// Whether a rule's conditions on `index` already rule out `value`
/// (Some(true)), allow it for sure (no condition: Some(false)), or are of
/// a shape this code does not rewrite (None).
fn excludes(args: &[Value], index: u64, value: u64) -> Option<bool> {
    let on: Vec<&Value> = args.iter().filter(|a| a["index"] == index).collect();
    match on.as_slice() {
        [] => Some(false),
        [c] => {
            let v = c["value"].as_u64()?;
            match c["op"].as_str()? {
                "SCMP_CMP_EQ" => Some(v != value),
                "SCMP_CMP_NE" => Some(v == value),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The rules that replace an allowing `socket` rule so that it no longer
/// allows `socket(AF_NETLINK, *, protocol)`: (rule and domain !=
/// AF_NETLINK) or (rule and protocol != `protocol`).
fn narrow_socket_rule(rule: &Value, protocol: u64) -> anyhow::Result<Vec<Value>> {
    let args: Vec<Value> = rule["args"].as_array().cloned().unwrap_or_default();
    let shape = || {
        format!(
            "a socket rule of a shape this command does not rewrite: {rule}; give another --base"
        )
    };
    let with = |extra: Vec<Value>, drop_index: Option<u64>| {
        let mut r = rule.clone();
        let mut a: Vec<Value> = args
            .iter()
            .filter(|c| drop_index.is_none_or(|i| c["index"] != i))
            .cloned()
            .collect();
        a.extend(extra);
        r["names"] = json!(["socket"]);
        r["args"] = json!(a);
        r
    };
    if excludes(&args, 0, AF_NETLINK).context(shape())?
        || excludes(&args, 2, protocol).context(shape())?
    {
        return Ok(vec![with(Vec::new(), None)]);
    }
    let mut out = Vec::new();
    // (rule and domain != AF_NETLINK): the rule has no condition on the
    // domain (it would have excluded AF_NETLINK or be EQ AF_NETLINK).
    if !args.iter().any(|c| c["index"] == 0) {
        out.push(with(vec![cond(0, "SCMP_CMP_NE", AF_NETLINK, 0)], None));
    }
    // (rule and protocol != protocol).
    let on_protocol: Vec<u64> = args
        .iter()
        .filter(|c| c["index"] == 2)
        .filter_map(|c| c["value"].as_u64())
        .collect();
    match on_protocol.as_slice() {
        [] => out.push(with(vec![cond(2, "SCMP_CMP_NE", protocol, 0)], None)),
        // An NE condition (EQ ones were settled above).
        [other] => {
            let mut excluded = vec![*other, protocol];
            excluded.sort_unstable();
            for c in outside(2, &excluded) {
                out.push(with(vec![c], Some(2)));
            }
        }
        _ => bail!(shape()),
    }
    Ok(out)
}

/// `base` (an OCI seccomp profile in the containers-common format, such
/// as podman's default) plus a rule making `socket(AF_NETLINK, *,
/// protocol)` fail with EPROTONOSUPPORT whatever the capabilities, the
/// rule `flowverbs exec` installs. Every rule that allowed that call is
/// narrowed (split into rules whose sets do not meet the denied one), so
/// that no allowing rule overlaps the denying one and libseccomp's choice
/// between overlapping rules never matters.
pub fn seccomp_profile(base: &Value, protocol: u64) -> anyhow::Result<Value> {
    let mut profile = base.clone();
    let rules = profile["syscalls"]
        .as_array()
        .context("the base profile has no \"syscalls\" list")?
        .clone();
    let mut out = Vec::with_capacity(rules.len() + 4);
    for rule in rules {
        let names: Vec<&str> = rule["names"]
            .as_array()
            .map(|n| n.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let allows = rule["action"].as_str() == Some("SCMP_ACT_ALLOW");
        if !names.contains(&"socket") || !allows {
            out.push(rule);
            continue;
        }
        if names.len() > 1 {
            let mut rest = rule.clone();
            rest["names"] = json!(names.iter().filter(|n| **n != "socket").collect::<Vec<_>>());
            out.push(rest);
        }
        out.extend(narrow_socket_rule(&rule, protocol)?);
    }
    out.push(json!({
        "names": ["socket"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": RULE_ERRNO,
        "args": [
            cond(0, "SCMP_CMP_EQ", AF_NETLINK, 0),
            cond(2, "SCMP_CMP_EQ", protocol, 0),
        ],
        "comment": "flowverbs: RDMA netlink hidden, so that libibverbs reads SYSFS_PATH (fv0)",
    }));
    profile["syscalls"] = Value::Array(out);
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `rules` (allowing `socket` rules, runc's semantics: the
    /// conditions of one rule all hold; any rule allows) allow
    /// socket(domain, _, protocol).
    fn evaluate(rules: &[Value], domain: u64, protocol: u64, caps: &[&str]) -> Option<String> {
        let holds = |c: &Value| {
            let x = if c["index"] == 0 { domain } else { protocol };
            let v = c["value"].as_u64().unwrap();
            let v2 = c["valueTwo"].as_u64().unwrap();
            match c["op"].as_str().unwrap() {
                "SCMP_CMP_EQ" => x == v,
                "SCMP_CMP_NE" => x != v,
                "SCMP_CMP_LT" => x < v,
                "SCMP_CMP_GT" => x > v,
                "SCMP_CMP_MASKED_EQ" => x & v == v2,
                op => panic!("{op}"),
            }
        };
        let applies = |r: &Value| {
            let has = |k: &str, c: &str| {
                r[k]["caps"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == c))
            };
            let inc_ok = r["includes"]["caps"]
                .as_array()
                .is_none_or(|a| a.iter().all(|c| caps.contains(&c.as_str().unwrap())));
            let exc_ok = caps.iter().all(|c| !has("excludes", c));
            inc_ok && exc_ok
        };
        let matching: Vec<String> = rules
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == "socket"))
            .filter(|r| applies(r))
            .filter(|r| r["args"].as_array().is_none_or(|a| a.iter().all(holds)))
            .map(|r| {
                let a = r["action"].as_str().unwrap().to_string();
                match r["errnoRet"].as_u64() {
                    Some(e) => format!("{a}({e})"),
                    None => a,
                }
            })
            .collect();
        let mut kinds = matching.clone();
        kinds.sort();
        kinds.dedup();
        assert!(
            kinds.len() <= 1,
            "overlapping rules with different actions: {kinds:?}"
        );
        kinds.pop()
    }

    /// The socket rules of containers-common's default profile (podman's),
    /// with another syscall sharing the unconditional rule.
    fn base() -> Value {
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                 "args": [{"index": 0, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 2, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
                 "includes": {}, "excludes": {"caps": ["CAP_AUDIT_WRITE"]}},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 2, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_NE"}],
                 "includes": {}, "excludes": {"caps": ["CAP_AUDIT_WRITE"]}},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_NE"}],
                 "includes": {}, "excludes": {"caps": ["CAP_AUDIT_WRITE"]}},
                {"names": ["socket", "bind"], "action": "SCMP_ACT_ALLOW", "args": null,
                 "includes": {"caps": ["CAP_AUDIT_WRITE"]}, "excludes": {}},
            ]
        })
    }

    #[test]
    fn profile_denies_exactly_rdma_netlink() {
        let p = seccomp_profile(&base(), NETLINK_RDMA).unwrap();
        let rules = p["syscalls"].as_array().unwrap();
        // Every rule: at most one condition per argument (runc's rule).
        for r in rules {
            let idx: Vec<u64> = r["args"]
                .as_array()
                .map(|a| a.iter().map(|c| c["index"].as_u64().unwrap()).collect())
                .unwrap_or_default();
            let mut d = idx.clone();
            d.dedup();
            assert_eq!(idx.len(), d.len(), "{r}");
        }
        let deny = Some(format!("SCMP_ACT_ERRNO({})", libc::EPROTONOSUPPORT));
        let allow = Some("SCMP_ACT_ALLOW".to_string());
        let audit = Some("SCMP_ACT_ERRNO(22)".to_string());
        for caps in [&[][..], &["CAP_AUDIT_WRITE"][..]] {
            let with_audit = !caps.is_empty();
            for proto in 0..64u64 {
                let want = match proto {
                    20 => &deny,
                    9 if !with_audit => &audit,
                    _ => &allow,
                };
                assert_eq!(
                    &evaluate(rules, 16, proto, caps),
                    want,
                    "netlink {proto} {caps:?}"
                );
                assert_eq!(
                    evaluate(rules, 2, proto, caps),
                    allow,
                    "inet {proto} {caps:?}"
                );
            }
            for proto in [u64::MAX, 1 << 32, (1 << 32) + 20, 0xffff_ffff] {
                assert_eq!(evaluate(rules, 16, proto, caps), allow, "{proto:#x}");
            }
        }
        // bind keeps its rule.
        assert!(rules.iter().any(
            |r| r["names"] == json!(["bind"]) && r["includes"]["caps"][0] == "CAP_AUDIT_WRITE"
        ));
        assert!(rules.iter().any(|r| r["names"] == json!(["read", "write"])));
    }

    #[test]
    fn unknown_socket_rule_shapes_are_refused() {
        let mut b = base();
        b["syscalls"][2]["args"][0]["op"] = json!("SCMP_CMP_GE");
        assert!(seccomp_profile(&b, NETLINK_RDMA).is_err());
        assert!(seccomp_profile(&json!({}), NETLINK_RDMA).is_err());
    }

    #[test]
    fn outside_ranges() {
        let hit = |cs: &[Value], x: u64| {
            cs.iter().any(|c| {
                let v = c["value"].as_u64().unwrap();
                match c["op"].as_str().unwrap() {
                    "SCMP_CMP_LT" => x < v,
                    "SCMP_CMP_GT" => x > v,
                    "SCMP_CMP_MASKED_EQ" => x & v == c["valueTwo"].as_u64().unwrap(),
                    _ => unreachable!(),
                }
            })
        };
        for ex in [vec![9, 20], vec![0, 20], vec![20, 21], vec![3, 4096]] {
            let cs = outside(2, &ex);
            for x in 0..5000u64 {
                assert_eq!(hit(&cs, x), !ex.contains(&x), "{ex:?} {x}");
            }
            assert!(hit(&cs, u64::MAX));
        }
    }

    #[test]
    fn cdi_versions() {
        assert_eq!(
            cdi_version_for_podman(Some("podman version 4.3.1\n")),
            "0.5.0"
        );
        assert_eq!(
            cdi_version_for_podman(Some("podman version 4.9.3")),
            "0.6.0"
        );
        assert_eq!(
            cdi_version_for_podman(Some("podman version 5.0.0-dev")),
            "0.6.0"
        );
        assert_eq!(cdi_version_for_podman(None), "0.5.0");
        assert_eq!(cdi_version_for_podman(Some("garbage")), "0.5.0");
    }

    #[test]
    fn cdi_spec_shape() {
        let input = CdiInput {
            cdi_version: "0.5.0".into(),
            runtime_dir: "/run/flowverbs".into(),
            dev_node: "/dev/infiniband/uverbs_fv12345678".into(),
            provider: "/usr/lib/x86_64-linux-gnu/libibverbs/libflowverbs-rdmav34.so".into(),
            vendor: vec![VendorDevice {
                node: "/dev/infiniband/uverbs0".into(),
                library: Some("/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so".into()),
                driver_file: Some("/etc/libibverbs.d/rxe.driver".into()),
            }],
            rdma_cm: Some("/dev/infiniband/rdma_cm_fv12345678".into()),
        };
        let s = cdi_spec(&input);
        assert_eq!(s["kind"], CDI_KIND);
        assert_eq!(s["cdiVersion"], "0.5.0");
        let d = &s["devices"][0];
        assert_eq!(d["name"], "fv0");
        let e = &d["containerEdits"];
        assert_eq!(
            e["env"],
            json!([
                "SYSFS_PATH=/run/flowverbs/fuse/sysfs",
                "RDMAV_DRIVERS=/usr/lib/flowverbs/libflowverbs"
            ])
        );
        assert_eq!(
            e["deviceNodes"][0]["path"],
            "/dev/infiniband/uverbs_fv12345678"
        );
        assert_eq!(
            e["deviceNodes"][1],
            json!({
                "path": "/dev/infiniband/rdma_cm",
                "hostPath": "/dev/infiniband/rdma_cm_fv12345678"
            })
        );
        assert_eq!(e["deviceNodes"][2]["path"], "/dev/infiniband/uverbs0");
        assert_eq!(e["mounts"][0]["options"][0], "rbind");
        assert_eq!(e["mounts"][0]["containerPath"], "/run/flowverbs");
        assert_eq!(
            e["mounts"][1]["containerPath"],
            "/usr/lib/flowverbs/libflowverbs-rdmav34.so"
        );
        assert_eq!(
            e["mounts"][3]["containerPath"],
            "/etc/libibverbs.d/rxe.driver"
        );
    }
}
