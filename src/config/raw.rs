//! The shape of `accounts.yaml` as serde structs: the one list of its keys.
//!
//! Owns which keys each mapping has (the fields of the `Raw*` structs, in the
//! order messages list them) and [`Slot`], the lenient value every field holds.
//! A `Slot` never fails to deserialize: a value of the wrong shape (a list
//! where one value belongs, ...) is kept as [`Slot::Wrong`], so the schema
//! reports every problem rather than the first. Unknown keys are ignored here
//! and reported by the schema, which compares the file's keys with
//! [`keys_of`]. Invariant: every present value carries its [`At`], read back
//! from the tag `yaml` put on it.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{
    MapAccessDeserializer, SeqAccessDeserializer, StrDeserializer, StringDeserializer,
};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};
use serde::{Deserialize, forward_to_deserialize_any};

use super::yaml::At;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawConfig {
    pub listen: Slot<String>,
    pub upstream: Slot<RawUpstream>,
    pub store: Slot<RawStore>,
    pub refresh: Slot<RawRefresh>,
    pub metrics: Slot<RawMetrics>,
    pub proxy: Slot<RawProxy>,
    pub clients: Slot<Vec<Slot<RawClient>>>,
    pub components: Slot<Vec<Slot<RawComponent>>>,
    pub accounts: Slot<Vec<Slot<RawAccount>>>,
}

/// `upstream:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawUpstream {
    pub base_urls: Slot<Vec<Slot<String>>>,
    pub wecom_base_urls: Slot<Vec<Slot<String>>>,
    pub timeout: Slot<String>,
    pub max_concurrency: Slot<String>,
}

/// `store:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawStore {
    pub path: Slot<String>,
    pub redis: Slot<String>,
    pub redis_prefix: Slot<String>,
}

/// `refresh:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawRefresh {
    pub legacy_at: Slot<String>,
    pub jitter: Slot<String>,
    pub stable_window: Slot<String>,
    pub backoff_initial: Slot<String>,
    pub backoff_max: Slot<String>,
}

/// `metrics:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawMetrics {
    pub per_account: Slot<String>,
}

/// `proxy:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawProxy {
    pub timeout: Slot<String>,
    pub max_body: Slot<String>,
    pub max_in_flight_per_client: Slot<String>,
}

/// One entry of `clients:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawClient {
    pub name: Slot<String>,
    pub key: Slot<String>,
    pub appids: Slot<Vec<Slot<String>>>,
    pub admin: Slot<String>,
}

/// One entry of `accounts:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawAccount {
    pub kind: Slot<String>,
    pub appid: Slot<String>,
    pub corpid: Slot<String>,
    pub agentid: Slot<String>,
    pub name: Slot<String>,
    pub secret: Slot<String>,
    pub secret_file: Slot<String>,
    pub mode: Slot<String>,
    pub fallback_to_stable: Slot<String>,
    pub enabled: Slot<String>,
    pub tickets: Slot<Vec<Slot<String>>>,
}

/// One entry of `components:` (an Open Platform third-party platform). Each
/// of its three secrets is given inline or as a `*_file`, like an account's.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawComponent {
    pub appid: Slot<String>,
    pub name: Slot<String>,
    pub secret: Slot<String>,
    pub secret_file: Slot<String>,
    pub token: Slot<String>,
    pub token_file: Slot<String>,
    pub encoding_aes_key: Slot<String>,
    pub encoding_aes_key_file: Slot<String>,
    pub enabled: Slot<String>,
}

/// Where each nested mapping's keys belong, for "it belongs under ..." hints.
pub(crate) fn homes() -> [(&'static [&'static str], &'static str); 8] {
    [
        (keys_of::<RawUpstream>(), "under `upstream:`"),
        (keys_of::<RawStore>(), "under `store:`"),
        (keys_of::<RawRefresh>(), "under `refresh:`"),
        (keys_of::<RawMetrics>(), "under `metrics:`"),
        (keys_of::<RawProxy>(), "under `proxy:`"),
        (keys_of::<RawAccount>(), "in an entry of `accounts:`"),
        (keys_of::<RawComponent>(), "in an entry of `components:`"),
        (keys_of::<RawClient>(), "in an entry of `clients:`"),
    ]
}

/// The value of one key (or list entry) as the file has it.
#[derive(Debug, Default)]
pub(crate) enum Slot<T> {
    /// The key is not there.
    #[default]
    Absent,
    /// The key is there with no value (`key:`, `~`, `null`).
    Null(At),
    /// A value of another shape than `T`; the text says which ("a list", ...).
    Wrong(At, &'static str),
    /// A value of the right shape.
    Given(At, T),
}

impl<T> Slot<T> {
    /// Where the value is; `None` when absent.
    pub(crate) fn at(&self) -> Option<At> {
        match self {
            Slot::Absent => None,
            Slot::Null(at) | Slot::Wrong(at, _) | Slot::Given(at, _) => Some(*at),
        }
    }
}

/// The shape a field expects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Scalar,
    List,
    Mapping,
}

impl Shape {
    /// How messages name a value of this shape.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Shape::Scalar => "a single value",
            Shape::List => "a list",
            Shape::Mapping => "a mapping",
        }
    }
}

/// What a [`Slot`] may hold.
pub(crate) trait Shaped {
    const SHAPE: Shape;
}

impl Shaped for String {
    const SHAPE: Shape = Shape::Scalar;
}

impl<T> Shaped for Vec<T> {
    const SHAPE: Shape = Shape::List;
}

macro_rules! mappings {
    ($($t:ty),*) => {$(impl Shaped for $t { const SHAPE: Shape = Shape::Mapping; })*};
}
mappings!(
    RawConfig,
    RawUpstream,
    RawStore,
    RawRefresh,
    RawMetrics,
    RawProxy,
    RawClient,
    RawComponent,
    RawAccount
);

impl<'de, T: Deserialize<'de> + Shaped> Deserialize<'de> for Slot<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Tagged(PhantomData))
    }
}

/// Reads the position tag, then the value inside it.
struct Tagged<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + Shaped> Visitor<'de> for Tagged<T> {
    type Value = Slot<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value tagged with its position")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Slot<T>, A::Error> {
        let (tag, value): (String, _) = data.variant()?;
        let at = tag
            .parse()
            .map_err(|_| de::Error::custom(format!("position tag {tag:?} is not a number")))?;
        value.newtype_variant_seed(Inner(at, PhantomData))
    }
}

/// The value at `At`, kept whatever its shape.
struct Inner<T>(At, PhantomData<T>);

impl<'de, T: Deserialize<'de> + Shaped> DeserializeSeed<'de> for Inner<T> {
    type Value = Slot<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Slot<T>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<T> Inner<T> {
    fn wrong(&self, shape: Shape) -> Slot<T> {
        Slot::Wrong(self.0, shape.name())
    }
}

impl<'de, T: Deserialize<'de> + Shaped> Visitor<'de> for Inner<T> {
    type Value = Slot<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Slot<T>, E> {
        Ok(Slot::Null(self.0))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Slot<T>, E> {
        if T::SHAPE != Shape::Scalar {
            return Ok(self.wrong(Shape::Scalar));
        }
        let text: StrDeserializer<'_, E> = text.into_deserializer();
        T::deserialize(text).map(|v| Slot::Given(self.0, v))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Slot<T>, E> {
        if T::SHAPE != Shape::Scalar {
            return Ok(self.wrong(Shape::Scalar));
        }
        let text: StringDeserializer<E> = text.into_deserializer();
        T::deserialize(text).map(|v| Slot::Given(self.0, v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Slot<T>, A::Error> {
        if T::SHAPE != Shape::List {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(self.wrong(Shape::List));
        }
        T::deserialize(SeqAccessDeserializer::new(seq)).map(|v| Slot::Given(self.0, v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slot<T>, A::Error> {
        if T::SHAPE != Shape::Mapping {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(self.wrong(Shape::Mapping));
        }
        T::deserialize(MapAccessDeserializer::new(map)).map(|v| Slot::Given(self.0, v))
    }
}

/// The keys of the struct `T` derives `Deserialize` for, in declaration order.
///
/// # Panics
///
/// When `T` is not a struct (a mistake in this module, caught by its tests).
pub(crate) fn keys_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.expect("keys_of is only used on structs")
}

/// A deserializer that only records the field list a struct asks for.
struct Probe(Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for &mut Probe {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs are probed"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = Some(fields);
        Err(de::Error::custom("probed"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    #[test]
    fn the_key_lists_come_from_the_structs_in_order() {
        assert_eq!(
            keys_of::<RawConfig>(),
            [
                "listen",
                "upstream",
                "store",
                "refresh",
                "metrics",
                "proxy",
                "clients",
                "components",
                "accounts"
            ]
        );
        assert_eq!(
            keys_of::<RawProxy>(),
            ["timeout", "max_body", "max_in_flight_per_client"]
        );
        assert_eq!(
            keys_of::<RawComponent>(),
            [
                "appid",
                "name",
                "secret",
                "secret_file",
                "token",
                "token_file",
                "encoding_aes_key",
                "encoding_aes_key_file",
                "enabled"
            ]
        );
        assert_eq!(
            keys_of::<RawUpstream>(),
            ["base_urls", "wecom_base_urls", "timeout", "max_concurrency"]
        );
        assert_eq!(keys_of::<RawClient>(), ["name", "key", "appids", "admin"]);
    }

    #[test]
    fn values_of_the_wrong_shape_are_kept_and_the_rest_still_read() {
        let doc = yaml::parse(
            "listen: [a, b]\nupstream: fast\nstore:\n  path: x\n  redis: {a: 1}\nrefresh:\n",
        )
        .unwrap()
        .unwrap();
        let raw: Slot<RawConfig> = serde_yaml::from_value(doc.root).unwrap();
        let Slot::Given(_, raw) = raw else {
            panic!("the top level is a mapping")
        };
        assert!(matches!(raw.listen, Slot::Wrong(_, "a list")));
        assert!(matches!(raw.upstream, Slot::Wrong(_, "a single value")));
        let Slot::Given(_, store) = &raw.store else {
            panic!("store is a mapping")
        };
        assert!(
            matches!(&store.path, Slot::Given(at, p) if p == "x" && doc.index.get(*at).line == 4)
        );
        assert!(matches!(store.redis, Slot::Wrong(_, "a mapping")));
        assert!(matches!(raw.refresh, Slot::Null(_)));
        assert!(matches!(raw.clients, Slot::Absent));
    }
}
