//! A parser of `iptables-save` / `ip6tables-save` output (pure: text in, tables out).
//!
//! The format, per table:
//!
//! ```text
//! # comment
//! *nat
//! :PREROUTING ACCEPT [0:0]        built-in chain: name, policy, counters
//! :KUBE-SERVICES - [0:0]          user chain: policy "-"
//! -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
//! COMMIT
//! ```
//!
//! A rule's text after `-A <chain> ` is kept verbatim: `iptables-restore` reads it back
//! exactly as `iptables-save` wrote it (quotes included), which is how rules are deleted.

use thiserror::Error;

/// One table of a dump (`*nat` .. `COMMIT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
}

/// A chain declaration (`:NAME POLICY [p:b]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// Built-in chains have a policy (ACCEPT, DROP); user chains have `-`.
    pub builtin: bool,
}

/// One `-A` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The chain the rule is in.
    pub chain: String,
    /// Everything after `-A <chain> `, verbatim.
    pub spec: String,
    /// The `-j`/`--jump` or `-g`/`--goto` target, if any.
    pub target: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
    pub reason: &'static str,
}

/// Parses a whole dump. Tables appear in the order of the text.
pub fn parse(text: &str) -> Result<Vec<Table>, ParseError> {
    let mut tables = Vec::new();
    let mut current: Option<Table> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let error = |reason| ParseError {
            line: index + 1,
            text: line.to_owned(),
            reason,
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if current.is_some() {
                return Err(error("table starts before the previous one's COMMIT"));
            }
            current = Some(Table {
                name: name.trim().to_owned(),
                chains: Vec::new(),
                rules: Vec::new(),
            });
            continue;
        }
        let Some(table) = current.as_mut() else {
            return Err(error("line outside a table"));
        };
        if line == "COMMIT" {
            tables.extend(current.take());
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut fields = decl.split_whitespace();
            let (Some(name), Some(policy)) = (fields.next(), fields.next()) else {
                return Err(error("chain declaration without a policy"));
            };
            table.chains.push(Chain {
                name: name.to_owned(),
                builtin: policy != "-",
            });
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let words = split_words(spec).map_err(error)?;
            table.rules.push(Rule {
                chain: chain.to_owned(),
                spec: spec.to_owned(),
                target: jump_target(&words),
            });
        } else {
            return Err(error("unknown line"));
        }
    }
    if current.is_some() {
        return Err(ParseError {
            line: text.lines().count(),
            text: String::new(),
            reason: "missing COMMIT at the end",
        });
    }
    Ok(tables)
}

/// The target of `-j`/`--jump`/`-g`/`--goto` among a rule's words.
fn jump_target(words: &[String]) -> Option<String> {
    words
        .windows(2)
        .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
        .map(|w| w[1].clone())
}

/// Splits a rule into words the way `iptables-restore` does: whitespace separates,
/// double quotes group (a backslash escapes the next character inside them).
fn split_words(spec: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                word.extend(chars.next());
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote");
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Thu Jan  1 00:00:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [3:180]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 198.18.9.0/24 -m comment --comment "not ours: -j KUBE-SERVICES" -j MASQUERADE
-A KUBE-SERVICES -d 198.19.0.1/32 -p tcp -m tcp --dport 80 -g KUBE-SVC-ABC
-A KUBE-SERVICES -m comment --comment "say \"hi\"" -j RETURN
COMMIT
# Completed
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22
COMMIT
"#;

    #[test]
    fn tables_chains_and_rules() {
        let tables = parse(DUMP).expect("parses");
        assert_eq!(tables.len(), 2);
        let nat = &tables[0];
        assert_eq!(nat.name, "nat");
        assert_eq!(
            nat.chains,
            [
                Chain {
                    name: "PREROUTING".into(),
                    builtin: true
                },
                Chain {
                    name: "POSTROUTING".into(),
                    builtin: true
                },
                Chain {
                    name: "KUBE-SERVICES".into(),
                    builtin: false
                },
            ]
        );
        let targets: Vec<_> = nat.rules.iter().map(|r| r.target.as_deref()).collect();
        assert_eq!(
            targets,
            [
                Some("KUBE-SERVICES"),
                Some("MASQUERADE"),
                Some("KUBE-SVC-ABC"),
                Some("RETURN")
            ]
        );
        assert_eq!(
            nat.rules[0].spec,
            r#"-m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
        );
        assert_eq!(tables[1].rules[0].target, None);
    }

    #[test]
    fn quoted_words_group_and_unescape() {
        assert_eq!(
            split_words(r#"-m comment --comment "a \"b\" -j X" -j Y"#).unwrap(),
            ["-m", "comment", "--comment", r#"a "b" -j X"#, "-j", "Y"]
        );
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert!(split_words(r#"--comment "open"#).is_err());
    }

    #[test]
    fn malformed_dumps_are_errors_with_the_line() {
        let e = parse("*nat\n:PREROUTING ACCEPT [0:0]\n").unwrap_err();
        assert_eq!(e.reason, "missing COMMIT at the end");
        let e = parse("-A INPUT -j ACCEPT\n").unwrap_err();
        assert_eq!((e.line, e.reason), (1, "line outside a table"));
        let e = parse("*nat\n*filter\nCOMMIT\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("*nat\n:KUBE-X\nCOMMIT\n").unwrap_err();
        assert_eq!(e.reason, "chain declaration without a policy");
        let e = parse("*nat\n-I INPUT 1 -j X\nCOMMIT\n").unwrap_err();
        assert_eq!(e.reason, "unknown line");
    }

    #[test]
    fn an_empty_dump_has_no_tables() {
        assert_eq!(parse("").unwrap(), []);
        assert_eq!(parse("# only a comment\n").unwrap(), []);
    }
}
