//! Network reach through nftables: the rule set the agent loads for
//! `organization-only`, and the check that reads the loaded rules back
//! (`nft -j list table inet redoubt_reach`) and decides what they allow.
//!
//! The rule set drops every outgoing packet except to loopback and to the
//! organization's addresses, and every incoming one except on loopback and replies to
//! connections allowed out. Host names in the bundle are resolved by the caller before
//! the rules are loaded: once loaded, DNS goes only to a resolver that is itself one of
//! the organization's endpoints.

use std::collections::BTreeSet;
use std::net::IpAddr;

use redoubt_proto::NetworkState;
use serde_json::Value;

/// The nftables table the agent owns (family `inet`).
pub const REACH_TABLE: &str = "redoubt_reach";

/// The `nft -f` script that replaces the agent's table with one allowing only `allowed`.
/// Deleting the table first (after creating it, so the delete cannot fail) makes the
/// load atomic and idempotent.
pub fn reach_ruleset(allowed: &[IpAddr]) -> String {
    let v4: BTreeSet<String> = allowed
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| a.to_string())
        .collect();
    let v6: BTreeSet<String> = allowed
        .iter()
        .filter(|a| a.is_ipv6())
        .map(|a| a.to_string())
        .collect();
    let mut out = format!(
        "table inet {REACH_TABLE}\ndelete table inet {REACH_TABLE}\ntable inet {REACH_TABLE} {{\n  chain output {{\n    type filter hook output priority 0; policy drop;\n    oifname \"lo\" accept\n"
    );
    for (family, set) in [("ip", &v4), ("ip6", &v6)] {
        if !set.is_empty() {
            out.push_str(&format!(
                "    {family} daddr {{ {} }} accept\n",
                set.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out.push_str(
        "  }\n  chain input {\n    type filter hook input priority 0; policy drop;\n    iifname \"lo\" accept\n    ct state established,related accept\n  }\n}\n",
    );
    out
}

/// The `nft -f` script that removes the agent's table (network open again).
pub fn open_ruleset() -> String {
    format!("table inet {REACH_TABLE}\ndelete table inet {REACH_TABLE}\n")
}

/// What the loaded table allows, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadedReach {
    /// The table exists.
    pub present: bool,
    /// The output chain hooks `output` with policy `drop`.
    pub output_drops: bool,
    /// The input chain hooks `input` with policy `drop`.
    pub input_drops: bool,
    /// Destination addresses the output chain accepts.
    pub allowed: BTreeSet<IpAddr>,
    /// Rules this module did not write (any of them may open the network).
    pub foreign_rules: usize,
}

/// Why a read-back could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable nftables listing: {0}")]
pub struct ListingError(String);

fn addresses(right: &Value) -> Option<Vec<IpAddr>> {
    match right {
        Value::String(s) => Some(vec![s.parse().ok()?]),
        Value::Object(o) => o
            .get("set")?
            .as_array()?
            .iter()
            .map(|v| v.as_str()?.parse().ok())
            .collect(),
        _ => None,
    }
}

/// Whether a rule's expressions are `<match> accept` and what the match is.
fn accepted_match(expr: &[Value]) -> Option<&Value> {
    match expr {
        [m, accept] if accept.get("accept").is_some() => m.get("match"),
        _ => None,
    }
}

fn is_eq(m: &Value) -> bool {
    m.get("op").and_then(Value::as_str) == Some("==")
}

/// Reads `nft -j list table inet redoubt_reach` output (or `nft -j list ruleset`).
pub fn parse_listing(json: &str) -> Result<LoadedReach, ListingError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| ListingError(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ListingError("no `nftables` array".into()))?;
    let mut r = LoadedReach::default();
    let ours = |o: &Value| {
        o.get("family").and_then(Value::as_str) == Some("inet")
            && (o.get("table").or(o.get("name")).and_then(Value::as_str) == Some(REACH_TABLE))
    };
    for item in items {
        if let Some(t) = item.get("table") {
            r.present |= ours(t);
        } else if let Some(c) = item.get("chain").filter(|c| ours(c)) {
            let drops = c.get("policy").and_then(Value::as_str) == Some("drop")
                && c.get("type").and_then(Value::as_str) == Some("filter")
                && c.get("prio").and_then(Value::as_i64) == Some(0);
            match (
                c.get("name").and_then(Value::as_str),
                c.get("hook").and_then(Value::as_str),
            ) {
                (Some("output"), Some("output")) => r.output_drops = drops,
                (Some("input"), Some("input")) => r.input_drops = drops,
                _ => r.foreign_rules += 1,
            }
        } else if let Some(rule) = item.get("rule").filter(|c| ours(c)) {
            let chain = rule.get("chain").and_then(Value::as_str);
            let expr = rule
                .get("expr")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let m = accepted_match(expr).filter(|m| is_eq(m) || chain == Some("input"));
            let understood = match (chain, m) {
                (Some("output"), Some(m)) => {
                    let left = m.get("left");
                    if left
                        .and_then(|l| l.pointer("/meta/key"))
                        .and_then(Value::as_str)
                        == Some("oifname")
                    {
                        m.get("right").and_then(Value::as_str) == Some("lo")
                    } else if let (Some("daddr"), Some(addrs)) = (
                        left.and_then(|l| l.pointer("/payload/field"))
                            .and_then(Value::as_str),
                        m.get("right").and_then(addresses),
                    ) {
                        r.allowed.extend(addrs);
                        true
                    } else {
                        false
                    }
                }
                (Some("input"), Some(m)) => {
                    let left = m.get("left");
                    let right = m.get("right");
                    (is_eq(m)
                        && left
                            .and_then(|l| l.pointer("/meta/key"))
                            .and_then(Value::as_str)
                            == Some("iifname")
                        && right.and_then(Value::as_str) == Some("lo"))
                        || (left
                            .and_then(|l| l.pointer("/ct/key"))
                            .and_then(Value::as_str)
                            == Some("state")
                            && right.and_then(Value::as_array).is_some_and(|s| {
                                s.iter()
                                    .all(|v| matches!(v.as_str(), Some("established" | "related")))
                            }))
                }
                _ => false,
            };
            if !understood {
                r.foreign_rules += 1;
            }
        }
    }
    Ok(r)
}

/// The measured reach: `organization-only` when the table drops by default in both
/// directions, holds no rule this module did not write, and accepts no address outside
/// `expected`; `open` otherwise.
pub fn measured_reach(loaded: &LoadedReach, expected: &[IpAddr]) -> NetworkState {
    let expected: BTreeSet<IpAddr> = expected.iter().copied().collect();
    if loaded.present
        && loaded.output_drops
        && loaded.input_drops
        && loaded.foreign_rules == 0
        && loaded.allowed.is_subset(&expected)
    {
        NetworkState::OrganizationOnly
    } else {
        NetworkState::Open
    }
}

/// The nftables table that cuts mobile data (family `inet`).
pub const CELLULAR_TABLE: &str = "redoubt_cellular";

/// Interface names that are mobile-data links on the phones we know, whatever sysfs
/// says: `wwan*` (the kernel's WWAN framework, `qmi_wwan`, `cdc_mbim`), `rmnet*`
/// (Qualcomm), `ccmni*` (MediaTek).
pub const WWAN_PATTERNS: [&str; 3] = ["wwan*", "rmnet*", "ccmni*"];

/// Whether the nftables interface `pattern` (a name, or a prefix ending in `*`)
/// matches `ifname`.
pub fn pattern_covers(pattern: &str, ifname: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ifname.starts_with(prefix),
        None => pattern == ifname,
    }
}

/// The `nft -f` script that drops all traffic on the mobile-data interfaces: the
/// [`WWAN_PATTERNS`] and the `named` ones (interfaces sysfs calls `wwan`), both ways.
/// It runs before ordinary filter chains (priority -10) and accepts everything else,
/// so it is independent of the reach table.
pub fn cellular_ruleset(named: &[String]) -> String {
    let mut names: BTreeSet<String> = WWAN_PATTERNS.iter().map(|p| (*p).to_owned()).collect();
    names.extend(
        named
            .iter()
            .filter(|n| {
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            })
            .filter(|n| !n.is_empty() && n.len() < 16)
            .cloned(),
    );
    let set = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table inet {CELLULAR_TABLE}\ndelete table inet {CELLULAR_TABLE}\ntable inet {CELLULAR_TABLE} {{\n  chain output {{\n    type filter hook output priority -10; policy accept;\n    oifname {{ {set} }} drop\n  }}\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    iifname {{ {set} }} drop\n  }}\n}}\n"
    )
}

/// The `nft -f` script that removes the mobile-data table.
pub fn open_cellular_ruleset() -> String {
    format!("table inet {CELLULAR_TABLE}\ndelete table inet {CELLULAR_TABLE}\n")
}

fn names(right: &Value) -> Option<Vec<String>> {
    match right {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Object(o) => o
            .get("set")?
            .as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// Reads `nft -j list table inet redoubt_cellular` output: the interface names and
/// patterns whose traffic is dropped in *both* directions. Only the rules
/// [`cellular_ruleset`] writes count; any other rule in the table is ignored, so an
/// `accept` added by someone else cannot make a name count as dropped.
pub fn parse_cellular_listing(json: &str) -> Result<BTreeSet<String>, ListingError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| ListingError(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ListingError("no `nftables` array".into()))?;
    let ours = |o: &Value| {
        o.get("family").and_then(Value::as_str) == Some("inet")
            && (o.get("table").or(o.get("name")).and_then(Value::as_str) == Some(CELLULAR_TABLE))
    };
    let mut hooked = BTreeSet::new();
    let mut out_names = BTreeSet::new();
    let mut in_names = BTreeSet::new();
    for item in items {
        if let Some(c) = item.get("chain").filter(|c| ours(c)) {
            let name = c.get("name").and_then(Value::as_str);
            let hook = c.get("hook").and_then(Value::as_str);
            if name.is_some()
                && name == hook
                && c.get("type").and_then(Value::as_str) == Some("filter")
            {
                hooked.insert(name.unwrap_or_default().to_owned());
            }
        } else if let Some(rule) = item.get("rule").filter(|r| ours(r)) {
            let expr = rule
                .get("expr")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let [m, verdict] = expr else { continue };
            if verdict.get("drop").is_none() {
                continue;
            }
            let Some(m) = m.get("match").filter(|m| is_eq(m)) else {
                continue;
            };
            let key = m.pointer("/left/meta/key").and_then(Value::as_str);
            let Some(listed) = m.get("right").and_then(names) else {
                continue;
            };
            match (rule.get("chain").and_then(Value::as_str), key) {
                (Some("output"), Some("oifname")) => out_names.extend(listed),
                (Some("input"), Some("iifname")) => in_names.extend(listed),
                _ => {}
            }
        }
    }
    if !(hooked.contains("output") && hooked.contains("input")) {
        return Ok(BTreeSet::new());
    }
    Ok(out_names.intersection(&in_names).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nft -j list table inet redoubt_reach` printed (nftables 1.0.6) after
    /// loading `reach_ruleset` for 10.1.2.3, 192.0.2.10 and 2001:db8::1.
    const LOADED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "redoubt_reach", "handle": 1}}, {"chain": {"family": "inet", "table": "redoubt_reach", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}}, {"chain": {"family": "inet", "table": "redoubt_reach", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "output", "handle": 3, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lo"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "output", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": ["10.1.2.3", "192.0.2.10"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "output", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "2001:db8::1"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "input", "handle": 7, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "input", "handle": 8, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}]}"#;

    fn addrs(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_rule_set_lists_each_family_once_and_replaces_the_table() {
        let text = reach_ruleset(&addrs(&[
            "192.0.2.10",
            "2001:db8::1",
            "10.1.2.3",
            "10.1.2.3",
        ]));
        assert!(text.starts_with(
            "table inet redoubt_reach\ndelete table inet redoubt_reach\ntable inet redoubt_reach {"
        ));
        assert!(
            text.contains("    ip daddr { 10.1.2.3, 192.0.2.10 } accept\n"),
            "{text}"
        );
        assert!(
            text.contains("    ip6 daddr { 2001:db8::1 } accept\n"),
            "{text}"
        );
        assert!(text.contains("policy drop;"));
        // No addresses: loopback only.
        let none = reach_ruleset(&[]);
        assert!(!none.contains("daddr"), "{none}");
        assert_eq!(
            open_ruleset(),
            "table inet redoubt_reach\ndelete table inet redoubt_reach\n"
        );
    }

    #[test]
    fn the_loaded_table_reads_back_as_organization_only() {
        let loaded = parse_listing(LOADED).unwrap();
        assert!(loaded.present && loaded.output_drops && loaded.input_drops);
        assert_eq!(loaded.foreign_rules, 0);
        assert_eq!(
            loaded.allowed,
            addrs(&["10.1.2.3", "192.0.2.10", "2001:db8::1"])
                .into_iter()
                .collect()
        );
        let expected = addrs(&["10.1.2.3", "192.0.2.10", "2001:db8::1", "10.9.9.9"]);
        assert_eq!(
            measured_reach(&loaded, &expected),
            NetworkState::OrganizationOnly
        );
        // An address the bundle does not list is allowed: open.
        assert_eq!(
            measured_reach(&loaded, &addrs(&["10.1.2.3", "2001:db8::1"])),
            NetworkState::Open
        );
    }

    #[test]
    fn anything_weaker_or_unknown_reads_as_open() {
        let expected = addrs(&["10.1.2.3", "192.0.2.10", "2001:db8::1"]);
        // Policy accept on output.
        let accept = LOADED.replacen(
            r#""hook": "output", "prio": 0, "policy": "drop""#,
            r#""hook": "output", "prio": 0, "policy": "accept""#,
            1,
        );
        assert_eq!(
            measured_reach(&parse_listing(&accept).unwrap(), &expected),
            NetworkState::Open
        );
        // A rule nobody here wrote (accept everything to port 443).
        let extra = format!(
            "{}{}",
            LOADED.strip_suffix("]}").unwrap(),
            r#", {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "output", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"accept": null}]}}]}"#
        );
        let parsed = parse_listing(&extra).unwrap();
        assert_eq!(parsed.foreign_rules, 1);
        assert_eq!(measured_reach(&parsed, &expected), NetworkState::Open);
        // No table at all.
        let empty =
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}"#;
        assert_eq!(
            measured_reach(&parse_listing(empty).unwrap(), &expected),
            NetworkState::Open
        );
        // Garbage is an error (the caller reports unknown).
        assert!(parse_listing("not json").is_err());
        assert!(parse_listing("{}").is_err());
    }

    /// `nft -j list table inet redoubt_cellular` (nftables 1.0.6) after loading
    /// `cellular_ruleset(&["qmi0"])`.
    const CELLULAR: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "redoubt_cellular", "handle": 2}}, {"chain": {"family": "inet", "table": "redoubt_cellular", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": -10, "policy": "accept"}}, {"chain": {"family": "inet", "table": "redoubt_cellular", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}, {"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "output", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["ccmni*", "qmi0", "rmnet*", "wwan*"]}}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["ccmni*", "qmi0", "rmnet*", "wwan*"]}}}, {"drop": null}]}}]}"#;

    #[test]
    fn the_cellular_table_drops_named_and_patterned_interfaces_both_ways() {
        let script = cellular_ruleset(&["qmi0".into(), "bad name\"".into()]);
        assert!(
            script.contains(r#"oifname { "ccmni*", "qmi0", "rmnet*", "wwan*" } drop"#),
            "{script}"
        );
        assert!(!script.contains("bad name"));
        let dropped = parse_cellular_listing(CELLULAR).unwrap();
        assert_eq!(
            dropped.into_iter().collect::<Vec<_>>(),
            ["ccmni*", "qmi0", "rmnet*", "wwan*"]
        );
        assert!(pattern_covers("wwan*", "wwan0"));
        assert!(pattern_covers("qmi0", "qmi0"));
        assert!(!pattern_covers("qmi0", "qmi01"));
        assert!(!pattern_covers("rmnet*", "wlan0"));
    }

    #[test]
    fn a_cellular_table_missing_a_direction_drops_nothing() {
        let one_way = CELLULAR.replace(r#""iifname""#, r#""oifname""#);
        assert!(parse_cellular_listing(&one_way).unwrap().is_empty());
        let accepting = CELLULAR.replace(r#"{"drop": null}"#, r#"{"accept": null}"#);
        assert!(parse_cellular_listing(&accepting).unwrap().is_empty());
        assert!(parse_cellular_listing("not json").is_err());
    }
}
