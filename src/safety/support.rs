//! Support for the person: which crisis resources to show for a locale,
//! and the gentle words that go with them.
//!
//! Pure: chooses from the configured resources (`[[safety.resources]]`) and
//! texts (`[safety.support]`); it sends nothing and knows no rooms.

use serde::Serialize;

use super::classifier::Level;
use crate::config::{ResourceConfig, SafetyConfig};

/// One resource in a `support` event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Resource {
    pub name: String,
    pub contact: String,
}

/// The language and country of a `hello.locale` such as `en-GB`, `es_ES`
/// or `es-419` (a region that is not a country is ignored).
pub fn parse_locale(locale: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(l) = locale else {
        return (None, None);
    };
    let mut parts = l.split(['-', '_']);
    let lang = parts
        .next()
        .filter(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic()))
        .map(|p| p.to_ascii_lowercase());
    let country = parts
        .find(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_alphabetic()))
        .map(|p| p.to_ascii_uppercase());
    (lang, country)
}

/// Resources for a locale: those for its country, else those for its
/// language, else the ones for everyone (an empty `countries` and
/// `languages`). Never empty when the configuration has a fallback.
pub fn resources_for(cfg: &SafetyConfig, locale: Option<&str>) -> Vec<Resource> {
    let (lang, country) = parse_locale(locale);
    let pick = |f: &dyn Fn(&ResourceConfig) -> bool| -> Vec<Resource> {
        cfg.resources
            .iter()
            .filter(|r| f(r))
            .map(|r| Resource {
                name: r.name.clone(),
                contact: r.contact.clone(),
            })
            .collect()
    };
    if let Some(c) = &country {
        let v = pick(&|r| r.countries.iter().any(|x| x == c));
        if !v.is_empty() {
            return v;
        }
    }
    if let Some(l) = &lang {
        let v = pick(&|r| r.countries.is_empty() && r.languages.iter().any(|x| x == l));
        if !v.is_empty() {
            return v;
        }
    }
    pick(&|r| r.countries.is_empty() && r.languages.is_empty())
}

/// The words of a `support` event, in the person's language when the
/// configuration has it (English otherwise).
pub fn support_text(cfg: &SafetyConfig, level: Level, locale: Option<&str>) -> String {
    let (lang, _) = parse_locale(locale);
    let texts = lang
        .as_deref()
        .and_then(|l| cfg.support.iter().find(|t| t.language == l))
        .or_else(|| cfg.support.iter().find(|t| t.language == "en"))
        .or_else(|| cfg.support.first());
    let Some(t) = texts else {
        return String::new();
    };
    match level {
        Level::None => t.help.clone(),
        Level::Concern => t.concern.clone(),
        Level::High | Level::Imminent => t.crisis.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> SafetyConfig {
        Config::parse(crate::config::DEFAULT_TOML)
            .expect("default config")
            .safety
    }

    #[test]
    fn locales_parse_leniently() {
        assert_eq!(
            parse_locale(Some("en-GB")),
            (Some("en".into()), Some("GB".into()))
        );
        assert_eq!(
            parse_locale(Some("es_es")),
            (Some("es".into()), Some("ES".into()))
        );
        assert_eq!(parse_locale(Some("es-419")), (Some("es".into()), None));
        assert_eq!(parse_locale(Some("")), (None, None));
        assert_eq!(parse_locale(Some("english please")), (None, None));
        assert_eq!(parse_locale(None), (None, None));
    }

    #[test]
    fn resources_follow_country_then_language_then_everyone() {
        let c = cfg();
        let names = |l: Option<&str>| -> Vec<String> {
            resources_for(&c, l)
                .into_iter()
                .map(|r| r.contact)
                .collect()
        };
        assert!(
            names(Some("en-US")).iter().any(|n| n.contains("988")),
            "{:?}",
            names(Some("en-US"))
        );
        assert!(names(Some("en-GB")).iter().any(|n| n.contains("116 123")));
        assert!(names(Some("en-IE")).iter().any(|n| n.contains("116 123")));
        assert!(names(Some("es-ES")).iter().any(|n| n.contains("024")));
        // A country without its own line: everyone's fallback.
        let fallback = names(Some("fr-FR"));
        assert!(
            fallback.iter().any(|n| n.contains("findahelpline.com")),
            "{fallback:?}"
        );
        assert!(!names(None).is_empty());
    }

    #[test]
    fn support_words_come_in_the_persons_language() {
        let c = cfg();
        let en = support_text(&c, Level::High, Some("en-GB"));
        let es = support_text(&c, Level::High, Some("es-MX"));
        assert!(!en.is_empty() && !es.is_empty());
        assert_ne!(en, es);
        assert_eq!(support_text(&c, Level::High, Some("de-DE")), en);
        assert_ne!(support_text(&c, Level::None, None), en);
    }
}
