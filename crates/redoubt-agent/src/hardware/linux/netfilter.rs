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
}
