//! The Prometheus text exposition format (version 0.0.4), written straight
//! into a byte buffer: the per-account part of `/metrics`, which is read from
//! the account slots at scrape time instead of living in the registry.
//!
//! Owns [`FamilyText`] and [`Family`]: how a family's `# HELP` / `# TYPE`
//! header, a sample line, a label value and a number are written.
//!
//! Invariants:
//! - A family is written whole, its header once right before its samples; a
//!   family without samples writes nothing (the caller keeps one
//!   [`FamilyText`] per family, so no family appears twice).
//! - Label values are escaped as the format requires (`\` → `\\`, `"` →
//!   `\"`, newline → `\n`); label names and metric names are static.
//! - Counter names end in `_total` (checked by a unit test over
//!   [`Family`] constants in use, and by `promtool check metrics`).
//! - Timestamps are Unix milliseconds written as exact decimal seconds
//!   (`1712345678.123`), the base unit, without a float round trip.

/// The kind of a family, its `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One metric family: its name, help text and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

impl Family {
    pub const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: Kind::Gauge,
        }
    }

    pub const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: Kind::Counter,
        }
    }
}

/// The samples of one family, collected in their own buffer so that one
/// pass over the accounts can fill every family; [`FamilyText::write_to`]
/// then appends the family whole, header first.
pub struct FamilyText {
    family: Family,
    body: Vec<u8>,
}

impl FamilyText {
    /// An empty family with room for `capacity` bytes of samples.
    pub fn with_capacity(family: Family, capacity: usize) -> Self {
        FamilyText {
            family,
            body: Vec::with_capacity(capacity),
        }
    }

    /// True while no sample was added.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Bytes of samples so far.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// One sample with an integer value.
    pub fn int(&mut self, labels: &[(&str, &str)], value: u64) {
        self.start_sample(labels);
        let mut buf = itoa::Buffer::new();
        self.body.extend_from_slice(buf.format(value).as_bytes());
        self.body.push(b'\n');
    }

    /// One sample whose value is the Unix time `ms` (milliseconds), written
    /// in seconds.
    pub fn millis_as_seconds(&mut self, labels: &[(&str, &str)], ms: i64) {
        self.start_sample(labels);
        write_millis_as_seconds(&mut self.body, ms);
        self.body.push(b'\n');
    }

    /// Appends the header and every sample to `out`; nothing when there is
    /// no sample.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if self.body.is_empty() {
            return;
        }
        write_header(out, &self.family);
        out.extend_from_slice(&self.body);
    }

    /// The name and labels of a sample and the space before its value.
    fn start_sample(&mut self, labels: &[(&str, &str)]) {
        let out = &mut self.body;
        out.extend_from_slice(self.family.name.as_bytes());
        if !labels.is_empty() {
            out.push(b'{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"=\"");
                escape_label_value(out, value);
                out.push(b'"');
            }
            out.push(b'}');
        }
        out.push(b' ');
    }
}

fn write_header(out: &mut Vec<u8>, family: &Family) {
    out.extend_from_slice(b"# HELP ");
    out.extend_from_slice(family.name.as_bytes());
    out.push(b' ');
    escape(out, family.help, false);
    out.extend_from_slice(b"\n# TYPE ");
    out.extend_from_slice(family.name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(family.kind.as_str().as_bytes());
    out.push(b'\n');
}

/// Appends `value` escaped as a label value.
pub fn escape_label_value(out: &mut Vec<u8>, value: &str) {
    escape(out, value, true);
}

/// Appends `text` with `\` and newlines escaped, and `"` too when `quote`
/// (label values; help texts keep their quotes).
fn escape(out: &mut Vec<u8>, text: &str, quote: bool) {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quote && b == b'"');
    if !text.bytes().any(special) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            _ => out.push(b),
        }
    }
}

/// Appends Unix milliseconds as decimal seconds: `1712345678123` →
/// `1712345678.123`, `1712345678100` → `1712345678.1`, whole seconds
/// without a fraction (what a float `ms / 1000` prints, exactly).
pub fn write_millis_as_seconds(out: &mut Vec<u8>, ms: i64) {
    let abs = ms.unsigned_abs();
    if ms < 0 {
        out.push(b'-');
    }
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(abs / 1000).as_bytes());
    let frac = abs % 1000;
    if frac != 0 {
        let digits = [
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let len = if frac.is_multiple_of(100) {
            1
        } else if frac.is_multiple_of(10) {
            2
        } else {
            3
        };
        out.push(b'.');
        out.extend_from_slice(&digits[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Family = Family::gauge("wxtoken_test_seconds", "A test gauge.");
    const C: Family = Family::counter("wxtoken_test_total", "A test counter.");

    fn text(families: &[&FamilyText]) -> String {
        let mut out = Vec::new();
        for f in families {
            f.write_to(&mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_header_comes_once_before_the_samples() {
        let mut c = FamilyText::with_capacity(C, 0);
        c.int(&[("appid", "wx1"), ("result", "ok")], 3);
        c.int(&[("appid", "wx2"), ("result", "ok")], 0);
        let mut g = FamilyText::with_capacity(G, 16);
        g.millis_as_seconds(&[], 1_712_345_678_123);
        assert_eq!(
            text(&[&c, &g]),
            "# HELP wxtoken_test_total A test counter.\n\
             # TYPE wxtoken_test_total counter\n\
             wxtoken_test_total{appid=\"wx1\",result=\"ok\"} 3\n\
             wxtoken_test_total{appid=\"wx2\",result=\"ok\"} 0\n\
             # HELP wxtoken_test_seconds A test gauge.\n\
             # TYPE wxtoken_test_seconds gauge\n\
             wxtoken_test_seconds 1712345678.123\n"
        );
    }

    #[test]
    fn a_family_without_samples_writes_nothing() {
        let g = FamilyText::with_capacity(G, 64);
        let mut c = FamilyText::with_capacity(C, 0);
        assert!(g.is_empty() && c.is_empty());
        c.int(&[], 1);
        assert_eq!(c.len(), "wxtoken_test_total 1\n".len());
        let t = text(&[&g, &c]);
        assert!(!t.contains("wxtoken_test_seconds"), "{t}");
        assert!(
            t.ends_with("# TYPE wxtoken_test_total counter\nwxtoken_test_total 1\n"),
            "{t}"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Vec::new();
        escape_label_value(&mut out, "a\\b\"c\nd");
        assert_eq!(out, b"a\\\\b\\\"c\\nd");
        let mut x =
            FamilyText::with_capacity(Family::gauge("wxtoken_x", "say \"hi\" \\ then\nmore"), 0);
        x.int(&[("ip", "\"")], 1);
        let t = text(&[&x]);
        assert_eq!(
            t,
            "# HELP wxtoken_x say \"hi\" \\\\ then\\nmore\n# TYPE wxtoken_x gauge\nwxtoken_x{ip=\"\\\"\"} 1\n"
        );
    }

    #[test]
    fn milliseconds_are_written_as_the_seconds_a_float_would_print() {
        for ms in [
            0_i64,
            1,
            10,
            100,
            999,
            1000,
            1_712_345_678_000,
            1_712_345_678_100,
            1_712_345_678_120,
            1_712_345_678_123,
            1_712_345_678_003,
            -1,
            -1_500,
        ] {
            let mut out = Vec::new();
            write_millis_as_seconds(&mut out, ms);
            let written = String::from_utf8(out).unwrap();
            assert_eq!(written, (ms as f64 / 1000.0).to_string(), "{ms}");
        }
        let mut out = Vec::new();
        write_millis_as_seconds(&mut out, i64::MIN);
        assert_eq!(out, b"-9223372036854775.808");
    }
}
