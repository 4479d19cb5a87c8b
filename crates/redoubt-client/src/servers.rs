//! The organization's server addresses a phone fails over between: the one of the
//! enrollment code, then the list the signed bundle carries. Every address is trusted
//! only through the same pinned CA, so the list decides where a phone knocks, never whom
//! it believes.

use url::Url;

/// An ordered list of `https://` origins with the one in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerList {
    enrolled: Url,
    urls: Vec<Url>,
    current: usize,
    failed_in_a_row: usize,
}

impl ServerList {
    /// A list of the one address a phone enrolled with.
    pub fn new(first: Url) -> ServerList {
        ServerList {
            enrolled: first.clone(),
            urls: vec![first],
            current: 0,
            failed_in_a_row: 0,
        }
    }

    /// Takes the organization's list (from a verified bundle, or the server's word over
    /// the pinned TLS session). Addresses that are not `https://` are ignored; the
    /// address in use stays in use if the list still names it; the enrollment address,
    /// if the list omits it, is kept last, so a list that names only unreachable servers
    /// never strands a phone.
    pub fn learn(&mut self, urls: &[Url]) {
        let using = self.current().clone();
        let mut next: Vec<Url> = Vec::new();
        for u in urls.iter().chain(std::iter::once(&self.enrolled)) {
            if u.scheme() == "https" && u.host_str().is_some() && !next.contains(u) {
                next.push(u.clone());
            }
        }
        if next == self.urls {
            return;
        }
        self.current = next.iter().position(|u| *u == using).unwrap_or(0);
        self.urls = next;
        self.failed_in_a_row = 0;
    }

    /// The address to use now.
    pub fn current(&self) -> &Url {
        &self.urls[self.current]
    }

    /// Every address, in order.
    pub fn all(&self) -> &[Url] {
        &self.urls
    }

    /// The address in use did not answer: moves to the next one. Returns `true` when
    /// every address has failed since the last success (time to back off).
    pub fn failed(&mut self) -> bool {
        self.failed_in_a_row += 1;
        self.current = (self.current + 1) % self.urls.len();
        if self.failed_in_a_row >= self.urls.len() {
            self.failed_in_a_row = 0;
            true
        } else {
            false
        }
    }

    /// The address in use answered.
    pub fn succeeded(&mut self) {
        self.failed_in_a_row = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn fails_over_in_order_and_backs_off_after_a_whole_round() {
        let mut l = ServerList::new(u("https://a.example:8443"));
        l.learn(&[u("https://b.example"), u("https://a.example:8443")]);
        // The address in use stays in use.
        assert_eq!(l.current(), &u("https://a.example:8443"));
        assert_eq!(l.all().len(), 2);
        assert!(!l.failed());
        assert_eq!(l.current(), &u("https://b.example"));
        assert!(l.failed(), "both failed: back off");
        assert_eq!(l.current(), &u("https://a.example:8443"));
        assert!(!l.failed());
        l.succeeded();
        assert!(!l.failed());
    }

    #[test]
    fn keeps_the_enrollment_address_and_ignores_what_is_not_https() {
        let mut l = ServerList::new(u("https://enrolled.example"));
        l.learn(&[
            u("http://plain.example"),
            u("https://n1.example"),
            u("https://n1.example"),
        ]);
        assert_eq!(
            l.all(),
            &[u("https://n1.example"), u("https://enrolled.example")]
        );
        assert_eq!(l.current(), &u("https://enrolled.example"));
        // A node the organization dropped from its list is dropped here too.
        l.learn(&[u("https://n2.example")]);
        assert_eq!(
            l.all(),
            &[u("https://n2.example"), u("https://enrolled.example")]
        );
        // An empty list (a bundle of a single-server organization): the enrollment one.
        l.learn(&[]);
        assert_eq!(l.all(), &[u("https://enrolled.example")]);
    }
}
