//! Network reach through nftables: the rule set the agent loads for
//! `organization-only`, and the check that reads the loaded rules back
//! (`nft -j list table inet redoubt_reach`) and decides what they allow.
//!
//! The rule set drops every outgoing packet except to loopback and to the
//! organization's addresses, and every incoming one except on loopback and replies to
//! connections allowed out. The addresses are the IP literals the server signed into
//! the bundle; host names are never resolved (the phone's resolver belongs to whatever
//! network it is on), so once loaded, DNS goes only to a resolver that is itself one of
//! the organization's addresses.

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
        "  }\n  chain input {\n    type filter hook input priority 0; policy drop;\n    iifname \"lo\" accept\n    ct state established,related accept\n  }\n  chain forward {\n    type filter hook forward priority 0; policy drop;\n  }\n}\n",
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
    /// The forward chain hooks `forward` with policy `drop` (nothing routed through
    /// the phone: tethering, containers).
    pub forward_drops: bool,
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
                (Some("forward"), Some("forward")) => r.forward_drops = drops,
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
                        || (matches!(m.get("op").and_then(Value::as_str), Some("in" | "=="))
                            && left
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

/// The measured reach: `organization-only` when the table drops by default in every
/// direction (out, in, forwarded), holds no rule this module did not write, and accepts no address outside
/// `expected`; `open` otherwise.
pub fn measured_reach(loaded: &LoadedReach, expected: &[IpAddr]) -> NetworkState {
    let expected: BTreeSet<IpAddr> = expected.iter().copied().collect();
    if loaded.present
        && loaded.output_drops
        && loaded.input_drops
        && loaded.forward_drops
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
/// (Qualcomm), `ccmni*` (MediaTek), `ppp*` (modems driven over PPP).
pub const WWAN_PATTERNS: [&str; 4] = ["wwan*", "rmnet*", "ccmni*", "ppp*"];

/// Whether the nftables interface `pattern` (a name, or a prefix ending in `*`)
/// matches `ifname`.
pub fn pattern_covers(pattern: &str, ifname: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ifname.starts_with(prefix),
        None => pattern == ifname,
    }
}

/// The `nft -f` script that drops all traffic on the mobile-data interfaces: the
/// [`WWAN_PATTERNS`] and the `named` ones (interfaces sysfs calls `wwan`), both ways,
/// and routed traffic (tethering, containers) in or out of them.
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
        "table inet {CELLULAR_TABLE}\ndelete table inet {CELLULAR_TABLE}\ntable inet {CELLULAR_TABLE} {{\n  chain output {{\n    type filter hook output priority -10; policy accept;\n    oifname {{ {set} }} drop\n  }}\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    iifname {{ {set} }} drop\n  }}\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n    oifname {{ {set} }} drop\n    iifname {{ {set} }} drop\n  }}\n}}\n"
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
/// patterns whose traffic is dropped in every direction (out, in, forwarded out,
/// forwarded in). The table must hold exactly what [`cellular_ruleset`] writes: any other
/// rule or chain in it (an `accept` inserted before the drop would let traffic through)
/// means nothing counts as dropped.
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
    let nothing = Ok(BTreeSet::new());
    let mut hooked = BTreeSet::new();
    // (chain, direction key) → names dropped.
    let mut dropped: std::collections::BTreeMap<(String, String), BTreeSet<String>> =
        Default::default();
    for item in items {
        if let Some(c) = item.get("chain").filter(|c| ours(c)) {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            let known = matches!(name, "output" | "input" | "forward")
                && c.get("hook").and_then(Value::as_str) == Some(name)
                && c.get("type").and_then(Value::as_str) == Some("filter");
            if !known {
                return nothing;
            }
            hooked.insert(name.to_owned());
        } else if let Some(rule) = item.get("rule").filter(|r| ours(r)) {
            let expr = rule
                .get("expr")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let [m, verdict] = expr else { return nothing };
            let Some(m) = m.get("match").filter(|m| is_eq(m)) else {
                return nothing;
            };
            let key = m.pointer("/left/meta/key").and_then(Value::as_str);
            let chain = rule.get("chain").and_then(Value::as_str);
            let (Some(listed), Some(key), Some(chain), true) = (
                m.get("right").and_then(names),
                key,
                chain,
                verdict.get("drop").is_some(),
            ) else {
                return nothing;
            };
            let fits = matches!(
                (chain, key),
                ("output", "oifname") | ("input", "iifname") | ("forward", "oifname" | "iifname")
            );
            if !fits {
                return nothing;
            }
            dropped
                .entry((chain.to_owned(), key.to_owned()))
                .or_default()
                .extend(listed);
        }
    }
    let needed = [
        ("output", "oifname"),
        ("input", "iifname"),
        ("forward", "oifname"),
        ("forward", "iifname"),
    ];
    if hooked.len() != 3 {
        return nothing;
    }
    let mut sets = needed.iter().map(|(c, k)| {
        dropped
            .get(&((*c).to_owned(), (*k).to_owned()))
            .cloned()
            .unwrap_or_default()
    });
    let first = sets.next().unwrap_or_default();
    Ok(sets.fold(first, |acc, s| acc.intersection(&s).cloned().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nft -j list table inet redoubt_reach` printed (nftables 1.0.6) after
    /// loading `reach_ruleset` for 10.1.2.3, 192.0.2.10 and 2001:db8::1.
    const LOADED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "redoubt_reach", "handle": 2}}, {"chain": {"family": "inet", "table": "redoubt_reach", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}}, {"chain": {"family": "inet", "table": "redoubt_reach", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"chain": {"family": "inet", "table": "redoubt_reach", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "output", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lo"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "output", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": ["10.1.2.3", "192.0.2.10"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "output", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "2001:db8::1"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "input", "handle": 8, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_reach", "chain": "input", "handle": 9, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}]}"#;

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
        // Forwarded traffic (tethering, containers) let through.
        let forwarding = LOADED.replacen(
            r#""hook": "forward", "prio": 0, "policy": "drop""#,
            r#""hook": "forward", "prio": 0, "policy": "accept""#,
            1,
        );
        assert_ne!(forwarding, LOADED);
        assert_eq!(
            measured_reach(&parse_listing(&forwarding).unwrap(), &expected),
            NetworkState::Open
        );
        // `ct state != established accept` looks like ours but accepts new connections.
        let negated = LOADED.replacen(
            r#"{"op": "in", "left": {"ct": {"key": "state"}}"#,
            r#"{"op": "!=", "left": {"ct": {"key": "state"}}"#,
            1,
        );
        assert_ne!(negated, LOADED);
        assert_eq!(
            measured_reach(&parse_listing(&negated).unwrap(), &expected),
            NetworkState::Open
        );
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

    /// `nft -j list table inet redoubt_cellular` (nftables 1.0.6, in a network
    /// namespace) after loading `cellular_ruleset(&["qmi0"])`.
    const CELLULAR: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "redoubt_cellular", "handle": 4}}, {"chain": {"family": "inet", "table": "redoubt_cellular", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": -10, "policy": "accept"}}, {"chain": {"family": "inet", "table": "redoubt_cellular", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}, {"chain": {"family": "inet", "table": "redoubt_cellular", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}}, {"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "output", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["ccmni*", "ppp*", "qmi0", "rmnet*", "wwan*"]}}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "input", "handle": 7, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["ccmni*", "ppp*", "qmi0", "rmnet*", "wwan*"]}}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "forward", "handle": 9, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["ccmni*", "ppp*", "qmi0", "rmnet*", "wwan*"]}}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "forward", "handle": 11, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["ccmni*", "ppp*", "qmi0", "rmnet*", "wwan*"]}}}, {"drop": null}]}}]}"#;

    #[test]
    fn the_cellular_table_drops_named_and_patterned_interfaces_both_ways() {
        let script = cellular_ruleset(&["qmi0".into(), "bad name\"".into()]);
        assert!(
            script.contains(r#"oifname { "ccmni*", "ppp*", "qmi0", "rmnet*", "wwan*" } drop"#),
            "{script}"
        );
        assert!(!script.contains("bad name"));
        let dropped = parse_cellular_listing(CELLULAR).unwrap();
        assert_eq!(
            dropped.into_iter().collect::<Vec<_>>(),
            ["ccmni*", "ppp*", "qmi0", "rmnet*", "wwan*"]
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
        // A rule inserted in front of the drop (what `nft insert rule … accept` adds).
        let inserted = CELLULAR.replace(
            r#"{"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "output", "handle": 5"#,
            r#"{"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "output", "handle": 12, "expr": [{"accept": null}]}}, {"rule": {"family": "inet", "table": "redoubt_cellular", "chain": "output", "handle": 5"#,
        );
        assert_ne!(inserted, CELLULAR);
        assert!(parse_cellular_listing(&inserted).unwrap().is_empty());
        // Without the forward chain, routed traffic (tethering) is not covered.
        let no_forward: Value = {
            let mut doc: Value = serde_json::from_str(CELLULAR).unwrap();
            let items = doc["nftables"].as_array_mut().unwrap();
            items.retain(|i| {
                i.pointer("/chain/name").and_then(Value::as_str) != Some("forward")
                    && i.pointer("/rule/chain").and_then(Value::as_str) != Some("forward")
            });
            doc
        };
        assert!(
            parse_cellular_listing(&no_forward.to_string())
                .unwrap()
                .is_empty()
        );
        assert!(parse_cellular_listing("not json").is_err());
    }
}
