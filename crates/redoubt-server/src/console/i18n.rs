//! The console's words in Russian and English: one catalogue per language
//! (`i18n/en.txt`, `i18n/ru.txt`, compiled into the binary), looked up by key. Pages
//! never hold text of their own; a unit test checks that both catalogues have the same
//! keys and that every key the templates and the console's code use exists.
//!
//! A catalogue line is `key = text`; `{name}` in a text is replaced by a value. Counted
//! texts have one line per plural form (`key.one`, `key.few`, `key.many` in Russian,
//! `key.one`, `key.other` in English), chosen by the CLDR rules of the language.

use std::collections::HashMap;
use std::sync::LazyLock;

/// A language the console speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Russian.
    Ru,
}

impl Lang {
    /// Every language, in the order the language menu shows them.
    pub const ALL: [Lang; 2] = [Lang::Ru, Lang::En];

    /// The BCP 47 tag (`en`, `ru`).
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ru => "ru",
        }
    }

    /// The language's own name.
    pub fn own_name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Ru => "Русский",
        }
    }

    /// The language of a tag (`ru`, `ru-RU`, `en-GB`), if the console speaks it.
    pub fn from_tag(tag: &str) -> Option<Lang> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Lang::En),
            "ru" => Some(Lang::Ru),
            _ => None,
        }
    }

    /// The browser's preferred language among ours (`Accept-Language`, by quality);
    /// English when it names neither.
    pub fn from_accept_language(header: Option<&str>) -> Lang {
        let mut best: Option<(f32, Lang)> = None;
        for part in header.unwrap_or("").split(',') {
            let mut pieces = part.split(';');
            let Some(lang) = pieces.next().and_then(Lang::from_tag) else {
                continue;
            };
            let q = pieces
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            if best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    fn catalogue(self) -> &'static HashMap<String, String> {
        match self {
            Lang::En => &EN,
            Lang::Ru => &RU,
        }
    }

    /// The plural form of `n` in this language.
    fn plural(self, n: u64) -> &'static str {
        match self {
            Lang::En => {
                if n == 1 {
                    "one"
                } else {
                    "other"
                }
            }
            Lang::Ru => {
                let (m10, m100) = (n % 10, n % 100);
                if m10 == 1 && m100 != 11 {
                    "one"
                } else if (2..=4).contains(&m10) && !(12..=14).contains(&m100) {
                    "few"
                } else {
                    "many"
                }
            }
        }
    }
}

static EN: LazyLock<HashMap<String, String>> = LazyLock::new(|| parse(include_str!("i18n/en.txt")));
static RU: LazyLock<HashMap<String, String>> = LazyLock::new(|| parse(include_str!("i18n/ru.txt")));

fn parse(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The words of one language, handed to every page.
#[derive(Clone, Copy, Debug)]
pub struct Tr {
    /// The language.
    pub lang: Lang,
}

impl Tr {
    /// The text of `key`; the key itself when it is missing (a test keeps that from
    /// happening, and a missing text then shows rather than breaking the page).
    pub fn get<'a>(&self, key: &'a str) -> &'a str
    where
        'static: 'a,
    {
        self.lang
            .catalogue()
            .get(key)
            .or_else(|| EN.get(key))
            .map_or(key, String::as_str)
    }

    /// Whether this language's catalogue has `key`.
    #[cfg(test)]
    pub fn has(&self, key: &str) -> bool {
        self.lang.catalogue().contains_key(key)
    }

    /// The text of `PREFIX.NAME`, for a value of a fixed set (a state, a role, a
    /// capability); the value itself when the catalogue has no text for it.
    pub fn sub(&self, prefix: &str, name: impl AsRef<str>) -> String {
        let key = format!("{prefix}.{}", name.as_ref());
        match self.lang.catalogue().get(&key).or_else(|| EN.get(&key)) {
            Some(text) => text.clone(),
            None => name.as_ref().to_owned(),
        }
    }

    /// The text of `key` with `{name}` replaced by `value`.
    pub fn with(&self, key: &str, name: &str, value: &dyn std::fmt::Display) -> String {
        self.get_owned(key)
            .replace(&format!("{{{name}}}"), &value.to_string())
    }

    /// The counted text `key` for `n` (its plural form), with `{n}` replaced.
    pub fn n(&self, key: &str, n: impl std::borrow::Borrow<u64>) -> String {
        let n = *n.borrow();
        let form = format!("{key}.{}", self.lang.plural(n));
        let text = self
            .lang
            .catalogue()
            .get(&form)
            .or_else(|| self.lang.catalogue().get(&format!("{key}.many")))
            .or_else(|| self.lang.catalogue().get(&format!("{key}.other")))
            .cloned()
            .unwrap_or_else(|| key.to_owned());
        text.replace("{n}", &n.to_string())
    }

    fn get_owned(&self, key: &str) -> String {
        self.lang
            .catalogue()
            .get(key)
            .or_else(|| EN.get(key))
            .cloned()
            .unwrap_or_else(|| key.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn base(key: &str) -> &str {
        for suffix in [".one", ".few", ".many", ".other"] {
            if let Some(b) = key.strip_suffix(suffix) {
                return b;
            }
        }
        key
    }

    #[test]
    fn both_catalogues_say_everything() {
        let en: BTreeSet<&str> = EN.keys().map(|k| base(k)).collect();
        let ru: BTreeSet<&str> = RU.keys().map(|k| base(k)).collect();
        let only_en: Vec<_> = en.difference(&ru).collect();
        let only_ru: Vec<_> = ru.difference(&en).collect();
        assert!(only_en.is_empty(), "missing in ru.txt: {only_en:?}");
        assert!(only_ru.is_empty(), "missing in en.txt: {only_ru:?}");
        for (lang, cat, forms) in [
            ("en", &*EN, &["one", "other"][..]),
            ("ru", &*RU, &["one", "few", "many"][..]),
        ] {
            for k in cat.keys() {
                assert!(!cat[k].is_empty(), "{lang}: {k} is empty");
                if base(k) != k {
                    for f in forms {
                        let full = format!("{}.{f}", base(k));
                        assert!(cat.contains_key(&full), "{lang}: {full} is missing");
                    }
                }
            }
        }
    }

    /// Every `t.get("…")`, `t.n("…"` and `t.with("…"` in the templates
    /// and the console's code names a key of the catalogues.
    #[test]
    fn every_key_used_exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["templates/console", "src/console"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() && !p.ends_with("i18n.rs") {
                    files.push(p);
                }
            }
        }
        let mut missing = Vec::new();
        let mut used = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for call in ["t.get(\"", "t.n(\"", "t.with(\""] {
                for (i, _) in text.match_indices(call) {
                    let rest = &text[i + call.len()..];
                    let key = &rest[..rest.find('"').unwrap()];
                    used += 1;
                    let plural = call == "t.n(\"";
                    let known = if plural {
                        EN.contains_key(&format!("{key}.one"))
                    } else {
                        EN.contains_key(key)
                    };
                    if !known {
                        missing.push(format!("{}: {key}", f.display()));
                    }
                }
            }
        }
        assert!(used > 50, "only {used} keys found: is the scan broken?");
        // Keys handed over as values (`error_page(t, status, "error.csrf")`).
        let root = root.join("src/console");
        for e in std::fs::read_dir(&root).unwrap() {
            let p = e.unwrap().path();
            if !p.is_file() || p.ends_with("i18n.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for prefix in [
                "\"error.",
                "\"bulk.",
                "\"filter.",
                "\"enroll.",
                "\"accounts.",
                "\"login.",
                "\"audit.",
                "\"dashboard.",
                "\"account.",
                "\"modes.",
                "\"zones.",
            ] {
                for (i, _) in text.match_indices(prefix) {
                    let rest = &text[i + 1..];
                    let key = &rest[..rest.find('"').unwrap()];
                    if key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
                        && !EN.contains_key(key)
                        && !EN.contains_key(&format!("{key}.one"))
                    {
                        missing.push(format!("{}: {key}", p.display()));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "keys not in the catalogues: {missing:#?}"
        );
    }

    #[test]
    fn russian_plurals() {
        let t = Tr { lang: Lang::Ru };
        let forms: Vec<String> = [1, 2, 5, 11, 21, 22, 25, 112]
            .iter()
            .map(|n| t.n("unit.phones", *n))
            .collect();
        assert_eq!(
            forms,
            [
                "1 телефон",
                "2 телефона",
                "5 телефонов",
                "11 телефонов",
                "21 телефон",
                "22 телефона",
                "25 телефонов",
                "112 телефонов"
            ]
        );
        let t = Tr { lang: Lang::En };
        assert_eq!(t.n("unit.phones", 1), "1 phone");
        assert_eq!(t.n("unit.phones", 3), "3 phones");
    }

    #[test]
    fn the_browser_chooses_the_default() {
        assert_eq!(
            Lang::from_accept_language(Some("ru-RU,ru;q=0.9,en;q=0.8")),
            Lang::Ru
        );
        assert_eq!(
            Lang::from_accept_language(Some("de-DE,en;q=0.5,ru;q=0.7")),
            Lang::Ru
        );
        assert_eq!(Lang::from_accept_language(Some("en-GB")), Lang::En);
        assert_eq!(Lang::from_accept_language(Some("de")), Lang::En);
        assert_eq!(Lang::from_accept_language(None), Lang::En);
    }
}
