//! Grammar-constrained decoding for JSON Schemas: a [`Grammar`] compiled from a schema, a
//! [`Matcher`] that follows the bytes generated so far, and a [`TokenTrie`] over the vocabulary so
//! that [`Matcher::mask`] says, in one depth-first walk, which tokens keep the output a prefix of
//! some document the schema accepts. Every finished reply then validates by construction.
//!
//! Everything works on bytes (tokens of a byte-level BPE vocabulary are byte strings, and a token
//! may end in the middle of a UTF-8 sequence).
//!
//! # The language
//!
//! * `type`: `object`, `array`, `string`, `number`, `integer`, `boolean`, `null`, or a list of
//!   them (either). Without `type`, the type is inferred from the keywords present (`properties`
//!   → object, `items` → array, `minLength` → string, `minimum` → number, several → either); a
//!   schema with none of them (or `true`) allows any JSON value. `false` allows nothing.
//! * objects: `properties` are written in the order the schema's map gives them (declared order
//!   when `serde_json`'s `preserve_order` feature is on, alphabetical otherwise), each optional
//!   one may be skipped, no other key is allowed (`additionalProperties` absent or `false`).
//!   Without `properties`, an object has any string keys with values of any type, or of the
//!   `additionalProperties` schema (`false`: only `{}`). Keys of such free objects may repeat.
//! * `enum` and `const`: exactly one of the values, serialized compactly by `serde_json`;
//!   sibling keywords (`type`, bounds, ...) filter the values.
//! * `integer`: `-?(0|[1-9][0-9]*)` with at most 18 digits (so it fits an `i64`); `number`: JSON
//!   number syntax with at most 15 significant digits (so `f64` keeps it exactly) and an exponent
//!   of at most 2 digits. `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (numeric,
//!   draft 2020) are enforced exactly: a prefix is accepted only if some completion lies within
//!   the bounds, so decoding never gets stuck. With bounds, numbers have no exponent.
//! * strings: any JSON string (all escapes; `\u` surrogates must pair), valid UTF-8 only, no
//!   control bytes; `minLength` and `maxLength` count characters (code points; an escape is one).
//! * arrays: `items` (one schema), `minItems`, `maxItems`.
//! * `anyOf` and `oneOf` (both as "at least one of"; alternatives may overlap, the matcher
//!   follows all of them at once), but not beside other constraint keywords.
//! * `$ref` to a local JSON pointer (`#`, `#/$defs/Name`, `#/definitions/Name`, ...), recursion
//!   allowed; beside `$ref` only annotations may appear.
//! * annotations, ignored: `title`, `description`, `default`, `examples`, `deprecated`,
//!   `readOnly`, `writeOnly`, `$schema`, `$id`, `$comment`.
//!
//! Any other keyword — `pattern`, `format`, `allOf`, `not`, `if`, `prefixItems`, `multipleOf`,
//! `patternProperties`, `uniqueItems`, ... — and `additionalProperties: true` (or a schema) beside
//! `properties`, tuple `items`, and remote `$ref`s are [`GrammarError::Unsupported`].
//!
//! Parts of a schema that no finite document satisfies (an optional property whose schema is
//! `false`, an `anyOf` branch requiring itself) are never entered; when the whole schema is such,
//! compiling fails with [`GrammarError::Invalid`].
//!
//! Whitespace outside strings: at most two bytes (space, tab, newline, return) in a row after
//! `{ [ : ,` and before `} ] , :`; none before the document nor after it is complete.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Why a JSON Schema cannot be compiled into a [`Grammar`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrammarError {
    /// The schema uses a keyword, or a form of one, that constrained decoding does not support.
    #[error("JSON Schema keyword `{keyword}` at `#{at}` is not supported by constrained decoding")]
    Unsupported {
        /// The keyword.
        keyword: String,
        /// JSON pointer to the schema that holds it (`""` for the root).
        at: String,
    },
    /// The schema is malformed, or no document satisfies it.
    #[error("invalid JSON Schema at `#{at}`: {message}")]
    Invalid {
        /// JSON pointer to the offending schema (`""` for the root).
        at: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(at: &str, message: impl Into<String>) -> GrammarError {
    GrammarError::Invalid { at: at.to_string(), message: message.into() }
}

fn unsupported(keyword: &str, at: &str) -> GrammarError {
    GrammarError::Unsupported { keyword: keyword.to_string(), at: at.to_string() }
}

/// `at` extended by one JSON pointer segment.
fn child(at: &str, key: &str) -> String {
    format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"))
}

type Id = u32;

/// Whitespace bytes allowed in a row between tokens.
const WS: u8 = 2;
/// Digits of an integer.
const INT_DIGITS: u8 = 18;
/// Significant digits of a number.
const NUM_DIGITS: u8 = 15;
/// Bounded numbers are compared in units of 10^-NUM_SCALE.
const NUM_SCALE: u32 = 15;

const ANY: Id = 0;
const ANY_OBJECT: Id = 1;
const ANY_ARRAY: Id = 2;
const ANY_STRING: Id = 3;
const ANY_NUMBER: Id = 4;
const SCALARS: Id = 5;
const BOOLEAN: Id = 6;
const NULL: Id = 7;

/// The `format` values of number types (as schemars writes Rust's): widths, not constraints
/// on the text.
fn numeric_format(f: &str) -> bool {
    matches!(
        f,
        "int"
            | "int8"
            | "int16"
            | "int32"
            | "int64"
            | "uint"
            | "uint8"
            | "uint16"
            | "uint32"
            | "uint64"
            | "float"
            | "double"
    )
}

/// The range of an integer `format`: what a reader of that width takes (`uint64` and `int64`
/// within the 18 digits integers may have here).
fn width_bounds(f: &str) -> Option<(i64, i64)> {
    const MOST: i64 = 999_999_999_999_999_999;
    Some(match f {
        "uint8" => (0, u8::MAX as i64),
        "uint16" => (0, u16::MAX as i64),
        "uint32" => (0, u32::MAX as i64),
        "uint" | "uint64" => (0, MOST),
        "int8" => (i8::MIN as i64, i8::MAX as i64),
        "int16" => (i16::MIN as i64, i16::MAX as i64),
        "int32" => (i32::MIN as i64, i32::MAX as i64),
        "int" | "int64" => (-MOST, MOST),
        _ => return None,
    })
}

/// Whether `type` is `number` or `integer` (alone or with `null`).
fn numeric_type(t: Option<&Value>) -> bool {
    let numeric = |v: &Value| matches!(v.as_str(), Some("number" | "integer"));
    match t {
        Some(Value::Array(types)) => {
            types.iter().any(numeric) && types.iter().all(|v| numeric(v) || v.as_str() == Some("null"))
        }
        Some(t) => numeric(t),
        None => false,
    }
}

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$schema",
    "$id",
    "$comment",
];

const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "items",
    "minItems",
    "maxItems",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
];

/// What a number may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NumSpec {
    integer: bool,
    /// Inclusive bounds on the value, in units of 10^-scale.
    bounds: Option<(i128, i128)>,
}

impl NumSpec {
    fn scale(self) -> u32 {
        if self.integer { 0 } else { NUM_SCALE }
    }

    /// Magnitudes that can be written are below this (in units).
    fn cap(self) -> u128 {
        if self.integer { 10u128.pow(INT_DIGITS as u32) } else { 10u128.pow(NUM_DIGITS as u32 + NUM_SCALE) }
    }
}

#[derive(Debug, Clone)]
struct Prop {
    /// The key as JSON, quotes included.
    key: Vec<u8>,
    value: Id,
    required: bool,
}

#[derive(Debug, Clone)]
enum Node {
    /// A `$ref` while it is compiled, then its target; gone from a finished grammar.
    Alias(Option<Id>),
    /// An object with these properties, in order.
    Object {
        props: Vec<Prop>,
        /// For each `i` in `0..=props.len()`, the first required property at `i` or later
        /// (`props.len()` if none).
        first_required: Vec<u16>,
    },
    /// An object with any keys, each value of `value`.
    Map {
        value: Id,
    },
    Array {
        items: Id,
        min: u32,
        max: u32,
    },
    String {
        min: u32,
        max: u32,
    },
    Number(NumSpec),
    /// Exactly one of these byte strings, sorted.
    Literal(Vec<Vec<u8>>),
    /// Any of these; in a finished grammar, none of them is a union.
    Union(Vec<Id>),
}

impl Node {
    fn literals<T: AsRef<[u8]>>(values: impl IntoIterator<Item = T>) -> Node {
        let mut values: Vec<Vec<u8>> = values.into_iter().map(|v| v.as_ref().to_vec()).collect();
        values.sort();
        values.dedup();
        Node::Literal(values)
    }

    fn object(props: Vec<Prop>) -> Node {
        let mut node = Node::Object { props, first_required: Vec::new() };
        node.index_required();
        node
    }

    fn index_required(&mut self) {
        if let Node::Object { props, first_required } = self {
            let n = props.len();
            *first_required = vec![n as u16; n + 1];
            for i in (0..n).rev() {
                first_required[i] = if props[i].required { i as u16 } else { first_required[i + 1] };
            }
        }
    }

    fn remap(&mut self, f: impl Fn(Id) -> Id) {
        match self {
            Node::Object { props, .. } => props.iter_mut().for_each(|p| p.value = f(p.value)),
            Node::Map { value } => *value = f(*value),
            Node::Array { items, .. } => *items = f(*items),
            Node::Union(alts) => alts.iter_mut().for_each(|a| *a = f(*a)),
            Node::Alias(_) | Node::String { .. } | Node::Number(_) | Node::Literal(_) => {}
        }
    }
}

fn builtins() -> Vec<Node> {
    vec![
        Node::Union(vec![ANY_OBJECT, ANY_ARRAY, ANY_STRING, ANY_NUMBER, SCALARS]),
        Node::Map { value: ANY },
        Node::Array { items: ANY, min: 0, max: u32::MAX },
        Node::String { min: 0, max: u32::MAX },
        Node::Number(NumSpec { integer: false, bounds: None }),
        Node::literals(["true", "false", "null"]),
        Node::literals(["false", "true"]),
        Node::literals(["null"]),
    ]
}

/// A JSON Schema compiled for constrained decoding: a graph of nodes (recursive `$ref`s become
/// cycles). Share it between [`Matcher`]s with an [`Arc`].
#[derive(Debug, Clone)]
pub struct Grammar {
    nodes: Vec<Node>,
    root: Id,
}

impl Grammar {
    /// Compile a JSON Schema (the subset described in the [module documentation](self)).
    pub fn from_schema(schema: &Value) -> Result<Grammar, GrammarError> {
        let mut compiler = Compiler { root: schema, nodes: builtins(), refs: HashMap::new(), filters: Vec::new() };
        let root = compiler.compile(schema, "")?;
        finish(compiler.nodes, root, compiler.filters)
    }

    /// Any JSON object, with values of any JSON type (OpenAI's `json_object` response format).
    pub fn any_object() -> Grammar {
        Grammar { nodes: builtins(), root: ANY_OBJECT }
    }
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, Id>,
    /// (literal node, node its values must also match)
    filters: Vec<(Id, Id)>,
}

impl Compiler<'_> {
    fn push(&mut self, node: Node, at: &str) -> Result<Id, GrammarError> {
        let id = Id::try_from(self.nodes.len()).map_err(|_| invalid(at, "the schema is too large"))?;
        self.nodes.push(node);
        Ok(id)
    }

    fn compile(&mut self, schema: &Value, at: &str) -> Result<Id, GrammarError> {
        let map = match schema {
            Value::Bool(true) => return Ok(ANY),
            Value::Bool(false) => return self.push(Node::Union(Vec::new()), at),
            Value::Object(map) => map,
            _ => return Err(invalid(at, "a schema must be an object or a boolean")),
        };
        // schemars marks Rust's number types with `format` (`uint64`, `double`, ...): on a
        // number or integer that names its width, which every JSON number fits; unsigned ones
        // are bounded below by 0.
        if let Some(Value::String(f)) = map.get("format")
            && numeric_format(f)
            && numeric_type(map.get("type"))
        {
            let mut plain = map.clone();
            plain.remove("format");
            if let Some((lo, hi)) = width_bounds(f) {
                let tighter =
                    |key: &str, v: i64, pick: fn(f64, f64) -> f64| match plain.get(key).and_then(Value::as_f64) {
                        Some(old) => Value::from(pick(old, v as f64)),
                        None => Value::from(v),
                    };
                let (lo, hi) = (tighter("minimum", lo, f64::max), tighter("maximum", hi, f64::min));
                plain.insert("minimum".into(), lo);
                plain.insert("maximum".into(), hi);
            }
            return self.compile(&Value::Object(plain), at);
        }
        if let Some(key) = map.keys().find(|k| !ANNOTATIONS.contains(&k.as_str()) && !KEYWORDS.contains(&k.as_str())) {
            return Err(unsupported(key, at));
        }
        let mut constraints = map
            .keys()
            .map(String::as_str)
            .filter(|k| !ANNOTATIONS.contains(k) && !matches!(*k, "$defs" | "definitions"));
        if let Some(r) = map.get("$ref") {
            if let Some(other) = constraints.find(|k| *k != "$ref") {
                return Err(unsupported(other, at));
            }
            return self.reference(r, at);
        }
        if map.contains_key("enum") || map.contains_key("const") {
            return self.literal(map, at);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = map.get(key) {
                if let Some(other) = constraints.find(|k| *k != key) {
                    return Err(unsupported(other, at));
                }
                let Value::Array(alts) = alts else {
                    return Err(invalid(at, format!("`{key}` must be an array of schemas")));
                };
                let mut ids = Vec::with_capacity(alts.len());
                for (i, alt) in alts.iter().enumerate() {
                    ids.push(self.compile(alt, &child(&child(at, key), &i.to_string()))?);
                }
                return self.push(Node::Union(ids), at);
            }
        }
        let types: Vec<&str> = match map.get("type") {
            None => inferred_types(map),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(list)) if !list.is_empty() => {
                let mut types = Vec::with_capacity(list.len());
                for t in list {
                    types.push(t.as_str().ok_or_else(|| invalid(at, "`type` must name types"))?);
                }
                types
            }
            Some(_) => return Err(invalid(at, "`type` must be a type name or a non-empty list of them")),
        };
        if types.is_empty() {
            return Ok(ANY);
        }
        let mut ids = Vec::with_capacity(types.len());
        for t in types {
            ids.push(self.typed(map, t, at)?);
        }
        if ids.len() == 1 { Ok(ids[0]) } else { self.push(Node::Union(ids), at) }
    }

    fn typed(&mut self, map: &Map<String, Value>, t: &str, at: &str) -> Result<Id, GrammarError> {
        match t {
            "object" => self.object(map, at),
            "array" => {
                let items = match map.get("items") {
                    None => ANY,
                    Some(Value::Array(_)) => return Err(unsupported("items", at)),
                    Some(items) => self.compile(items, &child(at, "items"))?,
                };
                let min = count(map, "minItems", at)?.unwrap_or(0);
                let max = count(map, "maxItems", at)?.unwrap_or(u32::MAX);
                if min > max {
                    return Err(invalid(at, "`minItems` is greater than `maxItems`"));
                }
                self.push(Node::Array { items, min, max }, at)
            }
            "string" => {
                let min = count(map, "minLength", at)?.unwrap_or(0);
                let max = count(map, "maxLength", at)?.unwrap_or(u32::MAX);
                if min > max {
                    return Err(invalid(at, "`minLength` is greater than `maxLength`"));
                }
                self.push(Node::String { min, max }, at)
            }
            "number" | "integer" => {
                let spec = number_spec(map, t == "integer", at)?;
                self.push(Node::Number(spec), at)
            }
            "boolean" => Ok(BOOLEAN),
            "null" => Ok(NULL),
            other => Err(invalid(&child(at, "type"), format!("unknown type `{other}`"))),
        }
    }

    fn object(&mut self, map: &Map<String, Value>, at: &str) -> Result<Id, GrammarError> {
        let props = match map.get("properties") {
            None => None,
            Some(Value::Object(props)) => Some(props).filter(|p| !p.is_empty()),
            Some(_) => return Err(invalid(at, "`properties` must be an object")),
        };
        let required: Vec<&str> = match map.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => {
                let mut required = Vec::with_capacity(names.len());
                for name in names {
                    required.push(name.as_str().ok_or_else(|| invalid(at, "`required` must list property names"))?);
                }
                required
            }
            Some(_) => return Err(invalid(at, "`required` must be an array of property names")),
        };
        let additional = map.get("additionalProperties");
        let Some(props) = props else {
            if let Some(name) = required.first() {
                return Err(invalid(at, format!("required property `{name}` is not declared in `properties`")));
            }
            return match additional {
                None | Some(Value::Bool(true)) => Ok(ANY_OBJECT),
                Some(Value::Bool(false)) => self.push(Node::object(Vec::new()), at),
                Some(schema) => {
                    let value = self.compile(schema, &child(at, "additionalProperties"))?;
                    self.push(Node::Map { value }, at)
                }
            };
        };
        if !matches!(additional, None | Some(Value::Bool(false))) {
            return Err(unsupported("additionalProperties", at));
        }
        if let Some(name) = required.iter().find(|name| !props.contains_key(**name)) {
            return Err(invalid(at, format!("required property `{name}` is not declared in `properties`")));
        }
        if props.len() >= u16::MAX as usize {
            return Err(invalid(at, "too many properties"));
        }
        let mut list = Vec::with_capacity(props.len());
        for (name, schema) in props {
            let key = serde_json::to_vec(name).expect("a string serializes");
            if key.len() > u16::MAX as usize {
                return Err(invalid(at, "a property name is too long"));
            }
            let value = self.compile(schema, &child(&child(at, "properties"), name))?;
            list.push(Prop { key, value, required: required.contains(&name.as_str()) });
        }
        self.push(Node::object(list), at)
    }

    fn literal(&mut self, map: &Map<String, Value>, at: &str) -> Result<Id, GrammarError> {
        let mut values: Vec<&Value> = match map.get("enum") {
            None => Vec::new(),
            Some(Value::Array(values)) => values.iter().collect(),
            Some(_) => return Err(invalid(at, "`enum` must be an array")),
        };
        if let Some(c) = map.get("const") {
            if map.contains_key("enum") {
                values.retain(|v| *v == c);
            } else {
                values = vec![c];
            }
        }
        if values.len() >= u16::MAX as usize {
            return Err(invalid(at, "`enum` has too many values"));
        }
        let id =
            self.push(Node::literals(values.iter().map(|v| serde_json::to_vec(v).expect("JSON serializes"))), at)?;
        let rest: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "enum" | "const"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if rest.keys().any(|k| !ANNOTATIONS.contains(&k.as_str()) && !matches!(k.as_str(), "$defs" | "definitions")) {
            let check = self.compile(&Value::Object(rest), at)?;
            self.filters.push((id, check));
        }
        Ok(id)
    }

    fn reference(&mut self, r: &Value, at: &str) -> Result<Id, GrammarError> {
        let Value::String(r) = r else {
            return Err(invalid(at, "`$ref` must be a string"));
        };
        if let Some(&id) = self.refs.get(r) {
            return Ok(id);
        }
        let Some(pointer) = r.strip_prefix('#').filter(|p| p.is_empty() || p.starts_with('/')) else {
            return Err(unsupported("$ref", at));
        };
        let target =
            self.root.pointer(pointer).ok_or_else(|| invalid(at, format!("`$ref` `{r}` points at nothing")))?;
        let id = self.push(Node::Alias(None), at)?;
        self.refs.insert(r.clone(), id);
        let target = self.compile(target, pointer)?;
        self.nodes[id as usize] = Node::Alias(Some(target));
        Ok(id)
    }
}

fn inferred_types(map: &Map<String, Value>) -> Vec<&'static str> {
    let has = |keys: &[&str]| keys.iter().any(|k| map.contains_key(*k));
    let mut types = Vec::new();
    if has(&["properties", "required", "additionalProperties"]) {
        types.push("object");
    }
    if has(&["items", "minItems", "maxItems"]) {
        types.push("array");
    }
    if has(&["minLength", "maxLength"]) {
        types.push("string");
    }
    if has(&["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]) {
        types.push("number");
    }
    types
}

fn count(map: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u32>, GrammarError> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n.min(u32::MAX as u64) as u32))
            .ok_or_else(|| invalid(at, format!("`{key}` must be a non-negative integer"))),
    }
}

fn number_spec(map: &Map<String, Value>, integer: bool, at: &str) -> Result<NumSpec, GrammarError> {
    let keys = ["minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"];
    let mut spec = NumSpec { integer, bounds: None };
    if !keys.iter().any(|k| map.contains_key(*k)) {
        return Ok(spec);
    }
    let cap = spec.cap() as i128;
    let (mut lo, mut hi) = (-(cap - 1), cap - 1);
    for key in keys {
        let Some(v) = map.get(key) else { continue };
        let Value::Number(n) = v else {
            return Err(invalid(at, format!("`{key}` must be a number")));
        };
        let (neg, magnitude, exact) = units(n, spec.scale(), spec.cap());
        let (m, up) = (magnitude as i128, i128::from(!exact));
        let (floor, ceil) = if neg { (-(m + up), -m) } else { (m, m + up) };
        match key {
            "minimum" => lo = lo.max(ceil),
            "exclusiveMinimum" => lo = lo.max(if exact { floor + 1 } else { ceil }),
            "maximum" => hi = hi.min(floor),
            _ => hi = hi.min(if exact { ceil - 1 } else { floor }),
        }
    }
    spec.bounds = Some((lo.max(-(cap - 1)), hi.min(cap - 1)));
    let start = Num::START;
    let minus = Num { phase: Phase::Minus, neg: true, ..Num::START };
    if !start.viable(spec) && !minus.viable(spec) {
        let what = if integer {
            format!("no integer of at most {INT_DIGITS} digits")
        } else {
            format!("no number of at most {NUM_DIGITS} significant digits")
        };
        return Err(invalid(at, format!("{what} lies within the bounds")));
    }
    Ok(spec)
}

/// A JSON number's sign, its magnitude in units of 10^-scale rounded down (at most `cap`), and
/// whether that magnitude is exact.
fn units(n: &serde_json::Number, scale: u32, cap: u128) -> (bool, u128, bool) {
    let text = n.to_string();
    let (neg, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().unwrap_or(0).clamp(-1000, 1000)),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|c| c.wrapping_sub(b'0')).collect();
    // magnitude = digits × 10^shift units
    let shift = exp + scale as i64 - frac.len() as i64;
    let keep = if shift >= 0 { digits.len() } else { digits.len().saturating_sub(shift.unsigned_abs() as usize) };
    let mut v: u128 = 0;
    for &d in &digits[..keep] {
        v = (v * 10 + d as u128).min(cap);
    }
    for _ in 0..shift.clamp(0, 64) {
        v = (v * 10).min(cap);
    }
    (neg, v, digits[keep..].iter().all(|&d| d == 0))
}

/// Resolve `$ref`s, flatten unions, filter `enum`s by their sibling keywords, and drop what no
/// finite document can fill.
fn finish(mut nodes: Vec<Node>, root: Id, filters: Vec<(Id, Id)>) -> Result<Grammar, GrammarError> {
    let n = nodes.len();
    let mut target: Vec<Id> = Vec::with_capacity(n);
    for i in 0..n {
        let mut at = i as Id;
        let mut hops = 0;
        while let Node::Alias(next) = &nodes[at as usize] {
            hops += 1;
            match next {
                Some(next) if hops <= n => at = *next,
                _ => return Err(invalid("", "a `$ref` cycle never reaches a schema")),
            }
        }
        target.push(at);
    }
    for node in &mut nodes {
        node.remap(|id| target[id as usize]);
    }
    let root = target[root as usize];
    let flat: Vec<Option<Vec<Id>>> = (0..n)
        .map(|i| match &nodes[i] {
            Node::Union(_) => Some(flatten(&nodes, i as Id)),
            _ => None,
        })
        .collect();
    for (i, alts) in flat.into_iter().enumerate() {
        if let Some(alts) = alts {
            nodes[i] = Node::Union(alts);
        }
    }
    for (literal, check) in filters {
        let check = target[check as usize];
        if let Node::Literal(mut values) = std::mem::replace(&mut nodes[literal as usize], Node::Literal(Vec::new())) {
            values.retain(|v| document_matches(&nodes, check, v));
            nodes[literal as usize] = Node::Literal(values);
        }
    }
    let mut live = vec![false; n];
    loop {
        let mut changed = false;
        for i in 0..n {
            if live[i] {
                continue;
            }
            let productive = match &nodes[i] {
                Node::Alias(_) => false,
                Node::Literal(values) => !values.is_empty(),
                Node::String { .. } | Node::Number(_) | Node::Map { .. } => true,
                Node::Array { items, min, .. } => *min == 0 || live[*items as usize],
                Node::Object { props, .. } => props.iter().all(|p| !p.required || live[p.value as usize]),
                Node::Union(alts) => alts.iter().any(|&a| live[a as usize]),
            };
            if productive {
                live[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if !live[root as usize] {
        return Err(invalid("", "no finite JSON document satisfies the schema"));
    }
    for node in &mut nodes {
        match node {
            Node::Object { props, .. } => props.retain(|p| p.required || live[p.value as usize]),
            Node::Union(alts) => alts.retain(|&a| live[a as usize]),
            Node::Array { items, max, .. } if !live[*items as usize] => *max = 0,
            Node::Map { value } if !live[*value as usize] => *node = Node::object(Vec::new()),
            _ => {}
        }
        node.index_required();
    }
    Ok(Grammar { nodes, root })
}

/// The alternatives of union `id` that are not unions themselves, nested unions expanded.
fn flatten(nodes: &[Node], id: Id) -> Vec<Id> {
    let (mut out, mut seen, mut todo) = (Vec::new(), vec![id], vec![id]);
    while let Some(u) = todo.pop() {
        if let Node::Union(alts) = &nodes[u as usize] {
            for &a in alts {
                if seen.contains(&a) {
                    continue;
                }
                seen.push(a);
                if matches!(nodes[a as usize], Node::Union(_)) {
                    todo.push(a);
                } else {
                    out.push(a);
                }
            }
        }
    }
    out
}

fn document_matches(nodes: &[Node], root: Id, bytes: &[u8]) -> bool {
    let mut state = State::start(root);
    let mut next = State::default();
    for &b in bytes {
        step(nodes, &state, b, &mut next);
        if next.live == 0 {
            return false;
        }
        std::mem::swap(&mut state, &mut next);
    }
    state.alive().iter().any(|s| finished(nodes, s))
}

// ---------------------------------------------------------------------------------------------
// Parse state.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjStage {
    /// After `{`.
    Open,
    /// Inside the key of property `prop`, `pos` bytes of it matched.
    Key { prop: u16, pos: u16 },
    /// After a key, before `:`.
    Colon,
    /// After a value.
    Value,
    /// After `,`.
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapStage {
    Open,
    Colon,
    Value,
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrStage {
    Open,
    Value,
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrStage {
    Chars,
    /// After `\`.
    Escape,
    /// Inside `\uXXXX`: `left` hex digits to go, `code` so far, `low`: it must be a low surrogate.
    Hex {
        left: u8,
        code: u16,
        low: bool,
    },
    /// After a high surrogate escape: `\` of the low one must follow.
    LowBackslash,
    /// Then `u`.
    LowU,
    /// Inside a UTF-8 sequence: `need` continuation bytes to go, the next in `lo..=hi`.
    Utf8 {
        need: u8,
        lo: u8,
        hi: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Minus,
    /// Integer part `0`.
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

/// A number being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Num {
    phase: Phase,
    neg: bool,
    /// Digits of the integer part, a lone `0` not counted.
    int_digits: u8,
    frac_digits: u8,
    exp_digits: u8,
    /// The integer and fraction digits so far, as one integer.
    digits: u64,
}

impl Num {
    const START: Num = Num { phase: Phase::Start, neg: false, int_digits: 0, frac_digits: 0, exp_digits: 0, digits: 0 };

    fn next(self, spec: NumSpec, b: u8) -> Option<Num> {
        let mut n = self;
        let d = b.wrapping_sub(b'0');
        let digit = d < 10;
        let bounded = spec.bounds.is_some();
        let max_int = if spec.integer { INT_DIGITS } else { NUM_DIGITS };
        match n.phase {
            Phase::Start if b == b'-' => {
                n.phase = Phase::Minus;
                n.neg = true;
            }
            // `-0` is no integer a typed reader takes (serde reads it as a float).
            Phase::Start if b == b'0' => n.phase = Phase::Zero,
            Phase::Minus if b == b'0' && !spec.integer => n.phase = Phase::Zero,
            Phase::Start | Phase::Minus if digit && d != 0 => {
                n.phase = Phase::Int;
                n.int_digits = 1;
                n.digits = d as u64;
            }
            Phase::Int if digit && n.int_digits < max_int => {
                n.int_digits += 1;
                n.digits = n.digits * 10 + d as u64;
            }
            Phase::Zero | Phase::Int if b == b'.' && !spec.integer && n.int_digits < NUM_DIGITS => n.phase = Phase::Dot,
            Phase::Dot | Phase::Frac if digit && n.int_digits + n.frac_digits < NUM_DIGITS => {
                n.phase = Phase::Frac;
                n.frac_digits += 1;
                n.digits = n.digits * 10 + d as u64;
            }
            Phase::Zero | Phase::Int | Phase::Frac if matches!(b, b'e' | b'E') && !spec.integer && !bounded => {
                n.phase = Phase::Exp;
            }
            Phase::Exp if matches!(b, b'+' | b'-') => n.phase = Phase::ExpSign,
            Phase::Exp | Phase::ExpSign | Phase::ExpDigits if digit && n.exp_digits < 2 => {
                n.phase = Phase::ExpDigits;
                n.exp_digits += 1;
            }
            _ => return None,
        }
        (!bounded || n.viable(spec)).then_some(n)
    }

    /// Some completion of this prefix lies within the bounds.
    fn viable(&self, spec: NumSpec) -> bool {
        let Some((lo, hi)) = spec.bounds else { return true };
        let (mlo, mhi) = if self.neg { ((-hi).max(0), -lo) } else { (lo.max(0), hi) };
        if mlo > mhi {
            return false;
        }
        let (mlo, mhi) = (mlo as u128, mhi as u128);
        // A multiple of `grid` in [a, b) within [mlo, mhi] (`a` is a multiple of `grid`).
        let hit = |a: u128, b: u128, grid: u128| {
            let c = a.max(mlo).div_ceil(grid) * grid;
            c < b && c <= mhi
        };
        let scale = spec.scale();
        // With `t` integer digits, the finest step a number can take (units).
        let grid = |t: u32| if spec.integer { 1 } else { 10u128.pow(t) };
        let max_int = if spec.integer { INT_DIGITS } else { NUM_DIGITS } as u32;
        let d = self.digits as u128;
        match self.phase {
            Phase::Start | Phase::Minus => (0..10u64).filter(|&f| f > 0 || !(self.neg && spec.integer)).any(|first| {
                let phase = if first == 0 { Phase::Zero } else { Phase::Int };
                Num { phase, int_digits: u8::from(first > 0), digits: first, ..*self }.viable(spec)
            }),
            Phase::Zero => hit(0, 10u128.pow(scale), grid(0)),
            Phase::Int => {
                let k = self.int_digits as u32;
                (0..=max_int - k).any(|m| {
                    let p = 10u128.pow(m + scale);
                    hit(d * p, (d + 1) * p, grid(k + m))
                })
            }
            Phase::Dot | Phase::Frac => {
                let p = 10u128.pow(scale - self.frac_digits as u32);
                hit(d * p, d * p + p, grid(self.int_digits as u32))
            }
            Phase::Exp | Phase::ExpSign | Phase::ExpDigits => true,
        }
    }

    /// The bytes so far are a whole number within the bounds.
    fn complete(&self, spec: NumSpec) -> bool {
        let scale = spec.scale();
        let magnitude = match self.phase {
            Phase::Zero | Phase::Int => self.digits as u128 * 10u128.pow(scale),
            Phase::Frac => self.digits as u128 * 10u128.pow(scale - self.frac_digits as u32),
            Phase::ExpDigits => return true,
            _ => return false,
        };
        match spec.bounds {
            None => true,
            Some((lo, hi)) => {
                let v = if self.neg { -(magnitude as i128) } else { magnitude as i128 };
                lo <= v && v <= hi
            }
        }
    }
}

/// One open construct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A value of `node` is due; `ws` whitespace bytes may come first.
    Value {
        node: Id,
        ws: u8,
    },
    Object {
        node: Id,
        next: u16,
        stage: ObjStage,
        ws: u8,
    },
    Map {
        node: Id,
        stage: MapStage,
        ws: u8,
    },
    Array {
        node: Id,
        count: u32,
        stage: ArrStage,
        ws: u8,
    },
    String {
        node: Id,
        chars: u32,
        stage: StrStage,
    },
    Number {
        node: Id,
        num: Num,
    },
    /// One of the values `lo..hi` of the literal node, `pos` bytes matched.
    Literal {
        node: Id,
        lo: u16,
        hi: u16,
        pos: u32,
    },
}

/// One reading of the bytes so far: the open constructs, innermost last; empty once the
/// document is complete.
type Stack = Vec<Frame>;

/// The readings alive (several where `anyOf` alternatives or optional keys share a prefix).
#[derive(Default)]
struct State {
    /// The first `live` are alive, the rest spare buffers.
    stacks: Vec<Stack>,
    live: usize,
    /// Spare buffers for the templates of forks.
    spare: Vec<Stack>,
}

impl Clone for State {
    fn clone(&self) -> State {
        State { stacks: self.alive().to_vec(), live: self.live, spare: Vec::new() }
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.alive()).finish()
    }
}

impl State {
    fn start(root: Id) -> State {
        State { stacks: vec![vec![Frame::Value { node: root, ws: 0 }]], live: 1, spare: Vec::new() }
    }

    fn alive(&self) -> &[Stack] {
        &self.stacks[..self.live]
    }

    /// Put a copy of `stack` in the first slot that is not alive.
    fn load(&mut self, stack: &[Frame]) {
        if self.stacks.len() == self.live {
            self.stacks.push(Vec::new());
        }
        let slot = &mut self.stacks[self.live];
        slot.clear();
        slot.extend_from_slice(stack);
    }

    fn dedup(&mut self) {
        let mut i = 0;
        while i < self.live {
            let mut k = i + 1;
            while k < self.live {
                if self.stacks[k] == self.stacks[i] {
                    self.live -= 1;
                    self.stacks.swap(k, self.live);
                } else {
                    k += 1;
                }
            }
            i += 1;
        }
    }
}

/// `dst` = `src` after byte `b` (no readings alive: `b` is refused).
fn step(nodes: &[Node], src: &State, b: u8, dst: &mut State) {
    dst.live = 0;
    for stack in src.alive() {
        dst.load(stack);
        advance(nodes, dst, b);
    }
    if dst.live > 1 {
        dst.dedup();
    }
}

/// Feed `b` to the stack in slot `st.live`; what survives becomes alive.
fn advance(nodes: &[Node], st: &mut State, b: u8) {
    let at = st.live;
    match feed(nodes, &mut st.stacks[at], b) {
        Fed::Yes => st.live += 1,
        Fed::No => {}
        Fed::Union(node) => {
            let Node::Union(alts) = &nodes[node as usize] else { return };
            let mut template = st.spare.pop().unwrap_or_default();
            template.clear();
            template.extend_from_slice(&st.stacks[at]);
            for &alt in alts {
                st.load(&template);
                let slot = st.live;
                if let Some(top) = st.stacks[slot].last_mut() {
                    *top = Frame::Value { node: alt, ws: 0 };
                }
                advance(nodes, st, b);
            }
            st.spare.push(template);
        }
        Fed::Keys { from, to } => {
            let mut template = st.spare.pop().unwrap_or_default();
            template.clear();
            template.extend_from_slice(&st.stacks[at]);
            for prop in from..=to {
                st.load(&template);
                let slot = st.live;
                if let Some(Frame::Object { stage, .. }) = st.stacks[slot].last_mut() {
                    *stage = ObjStage::Key { prop, pos: 1 };
                }
                st.live += 1;
            }
            st.spare.push(template);
        }
    }
}

/// What feeding one byte to a stack did.
enum Fed {
    Yes,
    No,
    /// The top is a value of this union: each alternative must be tried.
    Union(Id),
    /// The `"` of a key was taken: it may be the key of any property in `from..=to`.
    Keys {
        from: u16,
        to: u16,
    },
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

fn num_spec(nodes: &[Node], node: Id) -> NumSpec {
    match &nodes[node as usize] {
        Node::Number(spec) => *spec,
        _ => NumSpec { integer: false, bounds: None },
    }
}

fn feed(nodes: &[Node], stack: &mut Stack, b: u8) -> Fed {
    loop {
        let Some(top) = stack.last_mut() else { return Fed::No };
        match top {
            Frame::Value { node, ws } => {
                if is_ws(b) && *ws > 0 {
                    *ws -= 1;
                    return Fed::Yes;
                }
                let node = *node;
                let (frame, consumed) = match &nodes[node as usize] {
                    Node::Union(_) => return Fed::Union(node),
                    Node::Object { .. } if b == b'{' => {
                        (Frame::Object { node, next: 0, stage: ObjStage::Open, ws: WS }, true)
                    }
                    Node::Map { .. } if b == b'{' => (Frame::Map { node, stage: MapStage::Open, ws: WS }, true),
                    Node::Array { .. } if b == b'[' => {
                        (Frame::Array { node, count: 0, stage: ArrStage::Open, ws: WS }, true)
                    }
                    Node::String { .. } if b == b'"' => {
                        (Frame::String { node, chars: 0, stage: StrStage::Chars }, true)
                    }
                    Node::Number(_) => (Frame::Number { node, num: Num::START }, false),
                    Node::Literal(values) if !values.is_empty() => {
                        (Frame::Literal { node, lo: 0, hi: values.len() as u16, pos: 0 }, false)
                    }
                    _ => return Fed::No,
                };
                *top = frame;
                if consumed {
                    return Fed::Yes;
                }
            }
            Frame::Object { node, next, stage, ws } => {
                let Node::Object { props, first_required } = &nodes[*node as usize] else { return Fed::No };
                let n = props.len() as u16;
                if let ObjStage::Key { prop, pos } = stage {
                    let key = &props[*prop as usize].key;
                    if key.get(*pos as usize) != Some(&b) {
                        return Fed::No;
                    }
                    *pos += 1;
                    if *pos as usize == key.len() {
                        *next = *prop + 1;
                        *stage = ObjStage::Colon;
                        *ws = WS;
                    }
                    return Fed::Yes;
                }
                if is_ws(b) {
                    if *ws == 0 {
                        return Fed::No;
                    }
                    *ws -= 1;
                    return Fed::Yes;
                }
                let done = first_required[*next as usize] == n;
                match (*stage, b) {
                    (ObjStage::Open | ObjStage::Comma, b'"') if *next < n => {
                        return Fed::Keys { from: *next, to: first_required[*next as usize].min(n - 1) };
                    }
                    (ObjStage::Open | ObjStage::Value, b'}') if done => {
                        stack.pop();
                    }
                    (ObjStage::Colon, b':') => {
                        let value = props[*next as usize - 1].value;
                        *stage = ObjStage::Value;
                        *ws = WS;
                        stack.push(Frame::Value { node: value, ws: WS });
                    }
                    (ObjStage::Value, b',') if *next < n => {
                        *stage = ObjStage::Comma;
                        *ws = WS;
                    }
                    _ => return Fed::No,
                }
                return Fed::Yes;
            }
            Frame::Map { node, stage, ws } => {
                let Node::Map { value } = &nodes[*node as usize] else { return Fed::No };
                if is_ws(b) {
                    if *ws == 0 {
                        return Fed::No;
                    }
                    *ws -= 1;
                    return Fed::Yes;
                }
                match (*stage, b) {
                    (MapStage::Open | MapStage::Comma, b'"') => {
                        *stage = MapStage::Colon;
                        *ws = WS;
                        stack.push(Frame::String { node: ANY_STRING, chars: 0, stage: StrStage::Chars });
                    }
                    (MapStage::Open | MapStage::Value, b'}') => {
                        stack.pop();
                    }
                    (MapStage::Colon, b':') => {
                        *stage = MapStage::Value;
                        *ws = WS;
                        stack.push(Frame::Value { node: *value, ws: WS });
                    }
                    (MapStage::Value, b',') => {
                        *stage = MapStage::Comma;
                        *ws = WS;
                    }
                    _ => return Fed::No,
                }
                return Fed::Yes;
            }
            Frame::Array { node, count, stage, ws } => {
                let Node::Array { items, min, max } = &nodes[*node as usize] else { return Fed::No };
                let (items, min, max) = (*items, *min, *max);
                if is_ws(b) {
                    if *ws == 0 {
                        return Fed::No;
                    }
                    *ws -= 1;
                    return Fed::Yes;
                }
                match (*stage, b) {
                    (ArrStage::Open, b']') if min == 0 => {
                        stack.pop();
                    }
                    (ArrStage::Value, b']') if *count >= min => {
                        stack.pop();
                    }
                    (ArrStage::Value, b',') if *count < max => {
                        *stage = ArrStage::Comma;
                        *ws = WS;
                    }
                    (ArrStage::Open, _) if max == 0 => return Fed::No,
                    (ArrStage::Open | ArrStage::Comma, _) => {
                        *count += 1;
                        *stage = ArrStage::Value;
                        *ws = WS;
                        stack.push(Frame::Value { node: items, ws: 0 });
                        continue;
                    }
                    _ => return Fed::No,
                }
                return Fed::Yes;
            }
            Frame::String { node, chars, stage } => {
                let (min, max) = match &nodes[*node as usize] {
                    Node::String { min, max } => (*min, *max),
                    _ => (0, u32::MAX),
                };
                match *stage {
                    StrStage::Chars => {
                        if b == b'"' {
                            if *chars < min {
                                return Fed::No;
                            }
                            stack.pop();
                            return Fed::Yes;
                        }
                        if *chars >= max {
                            return Fed::No;
                        }
                        let utf8 = |need, lo, hi| StrStage::Utf8 { need, lo, hi };
                        *stage = match b {
                            b'\\' => StrStage::Escape,
                            0x20..=0x7F => StrStage::Chars,
                            0xC2..=0xDF => utf8(1, 0x80, 0xBF),
                            0xE0 => utf8(2, 0xA0, 0xBF),
                            0xE1..=0xEC | 0xEE | 0xEF => utf8(2, 0x80, 0xBF),
                            0xED => utf8(2, 0x80, 0x9F),
                            0xF0 => utf8(3, 0x90, 0xBF),
                            0xF1..=0xF3 => utf8(3, 0x80, 0xBF),
                            0xF4 => utf8(3, 0x80, 0x8F),
                            _ => return Fed::No,
                        };
                        *chars += 1;
                    }
                    StrStage::Utf8 { need, lo, hi } => {
                        if !(lo..=hi).contains(&b) {
                            return Fed::No;
                        }
                        *stage = if need == 1 {
                            StrStage::Chars
                        } else {
                            StrStage::Utf8 { need: need - 1, lo: 0x80, hi: 0xBF }
                        };
                    }
                    StrStage::Escape => {
                        *stage = match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => StrStage::Chars,
                            b'u' => StrStage::Hex { left: 4, code: 0, low: false },
                            _ => return Fed::No,
                        };
                    }
                    StrStage::Hex { left, code, low } => {
                        let Some(d) = (b as char).to_digit(16) else { return Fed::No };
                        let (code, left) = ((code << 4) | d as u16, left - 1);
                        let span = 1u32 << (4 * left);
                        let (first, last) = (code as u32 * span, code as u32 * span + span - 1);
                        let ok = if low { last >= 0xDC00 && first <= 0xDFFF } else { first < 0xDC00 || last > 0xDFFF };
                        if !ok {
                            return Fed::No;
                        }
                        *stage = if left > 0 {
                            StrStage::Hex { left, code, low }
                        } else if !low && (0xD800..=0xDBFF).contains(&code) {
                            StrStage::LowBackslash
                        } else {
                            StrStage::Chars
                        };
                    }
                    StrStage::LowBackslash if b == b'\\' => *stage = StrStage::LowU,
                    StrStage::LowU if b == b'u' => *stage = StrStage::Hex { left: 4, code: 0, low: true },
                    StrStage::LowBackslash | StrStage::LowU => return Fed::No,
                }
                return Fed::Yes;
            }
            Frame::Number { node, num } => {
                let spec = num_spec(nodes, *node);
                if let Some(n) = num.next(spec, b) {
                    *num = n;
                    return Fed::Yes;
                }
                if !num.complete(spec) {
                    return Fed::No;
                }
                // The number ended before `b`: the enclosing construct takes it.
                stack.pop();
            }
            Frame::Literal { node, lo, hi, pos } => {
                let Node::Literal(values) = &nodes[*node as usize] else { return Fed::No };
                let p = *pos as usize;
                let range = &values[*lo as usize..*hi as usize];
                let a = range.partition_point(|v| v.get(p) < Some(&b));
                let z = range.partition_point(|v| v.get(p) <= Some(&b));
                if a < z {
                    let (a, z) = (*lo + a as u16, *lo + z as u16);
                    (*lo, *hi, *pos) = (a, z, *pos + 1);
                    if z - a == 1 && values[a as usize].len() == p + 1 {
                        stack.pop();
                    }
                    return Fed::Yes;
                }
                // A value that is a prefix of others (`1` of `1` and `10`) ended before `b`.
                if range.first().is_none_or(|v| v.len() != p) {
                    return Fed::No;
                }
                stack.pop();
            }
        }
    }
}

/// The stack reads a whole document: nothing open, or only a number (or numeric literal)
/// that may end here.
fn finished(nodes: &[Node], stack: &[Frame]) -> bool {
    match stack {
        [] => true,
        [Frame::Number { node, num }] => num.complete(num_spec(nodes, *node)),
        [Frame::Literal { node, lo, pos, .. }] => match &nodes[*node as usize] {
            Node::Literal(values) => values.get(*lo as usize).is_some_and(|v| v.len() == *pos as usize),
            _ => false,
        },
        _ => false,
    }
}

/// The parse state after the bytes fed so far: which continuations keep the output a prefix of
/// a document the [`Grammar`] accepts.
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    state: State,
}

impl Matcher {
    /// A matcher at the start of a document.
    pub fn new(grammar: Arc<Grammar>) -> Matcher {
        let state = State::start(grammar.root);
        Matcher { grammar, state }
    }

    /// Take `bytes` as the next output; `false` (and `self` unchanged) if the output would no
    /// longer be a prefix of a valid document.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        match self.after(bytes) {
            Some(state) => {
                self.state = state;
                true
            }
            None => false,
        }
    }

    /// Whether [`feed`](Self::feed) would take `bytes`, without taking them.
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        self.after(bytes).is_some()
    }

    fn after(&self, bytes: &[u8]) -> Option<State> {
        let mut state = self.state.clone();
        let mut next = State::default();
        for &b in bytes {
            step(&self.grammar.nodes, &state, b, &mut next);
            if next.live == 0 {
                return None;
            }
            std::mem::swap(&mut state, &mut next);
        }
        Some(state)
    }

    /// The bytes so far are a whole valid document.
    pub fn is_complete(&self) -> bool {
        self.state.alive().iter().any(|s| finished(&self.grammar.nodes, s))
    }

    /// Some non-empty continuation is still valid (`false` once the top-level value closed).
    pub fn can_continue(&self) -> bool {
        let mut next = State::default();
        (0..=255u8).any(|b| {
            step(&self.grammar.nodes, &self.state, b, &mut next);
            next.live > 0
        })
    }

    /// Set `allowed[id]` to whether [`accepts`](Self::accepts) takes token `id`'s bytes, for
    /// every token of `trie` (`allowed` should have [`TokenTrie::len`] entries). Tokens without
    /// bytes, and empty ones (they would make no progress), are not allowed.
    ///
    /// One depth-first walk of the trie carrying the parse state: a rejected byte prunes every
    /// token below it.
    pub fn mask(&self, trie: &TokenTrie, allowed: &mut [bool]) {
        allowed.fill(false);
        let mut levels: Vec<State> = Vec::with_capacity(trie.depth + 1);
        levels.push(self.state.clone());
        levels.resize_with(trie.depth + 1, State::default);
        walk(&self.grammar.nodes, trie, 0, &mut levels, allowed);
    }
}

fn walk(nodes: &[Node], trie: &TokenTrie, at: usize, levels: &mut [State], allowed: &mut [bool]) {
    let Some((here, deeper)) = levels.split_first_mut() else { return };
    if deeper.is_empty() {
        return;
    }
    let (from, to) = trie.nodes[at].children;
    for child in from as usize..to as usize {
        let node = trie.nodes[child];
        step(nodes, here, node.byte, &mut deeper[0]);
        if deeper[0].live == 0 {
            continue;
        }
        for &id in &trie.ids[node.ids.0 as usize..node.ids.1 as usize] {
            if let Some(a) = allowed.get_mut(id as usize) {
                *a = true;
            }
        }
        if node.children.0 < node.children.1 {
            walk(nodes, trie, child, deeper, allowed);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct TrieNode {
    /// The byte on the edge from the parent.
    byte: u8,
    /// Range of `TokenTrie::nodes`.
    children: (u32, u32),
    /// Range of `TokenTrie::ids`: the tokens whose bytes end here.
    ids: (u32, u32),
}

/// A vocabulary's tokens as a byte trie (children of a node contiguous, in byte order), built
/// once per vocabulary for [`Matcher::mask`].
#[derive(Debug, Clone)]
pub struct TokenTrie {
    nodes: Vec<TrieNode>,
    ids: Vec<u32>,
    vocab: usize,
    /// The longest token.
    depth: usize,
}

impl TokenTrie {
    /// The trie of `tokens[id]`'s bytes; `None` (special tokens) and empty tokens are left out.
    pub fn new(tokens: &[Option<Vec<u8>>]) -> TokenTrie {
        #[derive(Default)]
        struct Build {
            children: Vec<(u8, u32)>,
            ids: Vec<u32>,
        }
        let mut build = vec![Build::default()];
        let mut depth = 0;
        for (id, token) in tokens.iter().enumerate() {
            let Some(bytes) = token.as_deref().filter(|b| !b.is_empty()) else { continue };
            depth = depth.max(bytes.len());
            let mut at = 0;
            for &byte in bytes {
                at = match build[at].children.binary_search_by_key(&byte, |c| c.0) {
                    Ok(i) => build[at].children[i].1 as usize,
                    Err(i) => {
                        let new = build.len();
                        build.push(Build::default());
                        build[at].children.insert(i, (byte, new as u32));
                        new
                    }
                };
            }
            build[at].ids.push(id as u32);
        }
        // Breadth-first, so that each node's children are contiguous.
        let mut order: Vec<(usize, u8)> = vec![(0, 0)];
        let mut nodes = Vec::with_capacity(build.len());
        let mut ids = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let (b, byte) = order[i];
            let start = order.len() as u32;
            order.extend(build[b].children.iter().map(|&(byte, c)| (c as usize, byte)));
            let id_start = ids.len() as u32;
            ids.extend_from_slice(&build[b].ids);
            nodes.push(TrieNode { byte, children: (start, order.len() as u32), ids: (id_start, ids.len() as u32) });
            i += 1;
        }
        TokenTrie { nodes, ids, vocab: tokens.len(), depth }
    }

    /// The vocabulary size (tokens with and without bytes).
    pub fn len(&self) -> usize {
        self.vocab
    }

    /// The vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.vocab == 0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn grammar(schema: Value) -> Arc<Grammar> {
        Arc::new(Grammar::from_schema(&schema).unwrap_or_else(|e| panic!("{e}")))
    }

    /// The index of the first byte refused, or `None` if all were taken.
    fn first_refused(g: &Arc<Grammar>, text: &[u8]) -> Option<usize> {
        let mut m = Matcher::new(g.clone());
        text.iter().position(|&b| !m.feed(&[b]))
    }

    #[track_caller]
    fn complete(g: &Arc<Grammar>, text: &str) {
        let mut m = Matcher::new(g.clone());
        for (i, b) in text.bytes().enumerate() {
            assert!(m.feed(&[b]), "{text:?} refused at byte {i}");
        }
        assert!(m.is_complete(), "{text:?} is not complete");
    }

    #[track_caller]
    fn refused_at(g: &Arc<Grammar>, text: &str, at: usize) {
        assert_eq!(first_refused(g, text.as_bytes()), Some(at), "{text:?}");
    }

    #[track_caller]
    fn prefix(g: &Arc<Grammar>, text: &str) {
        let mut m = Matcher::new(g.clone());
        assert!(m.feed(text.as_bytes()), "{text:?} refused");
        assert!(!m.is_complete(), "{text:?} should not be complete");
        assert!(m.can_continue());
    }

    fn weather() -> Arc<Grammar> {
        grammar(json!({
            "type": "object",
            "title": "Weather",
            "properties": {
                "city": {"type": "string", "description": "where"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "units": {"enum": ["c", "f"]}
            },
            "required": ["city", "days"]
        }))
    }

    #[test]
    fn valid_documents_feed_through_and_are_complete() {
        let g = weather();
        complete(&g, r#"{"city":"Oslo","days":3}"#);
        complete(&g, r#"{"city":"Oslo","days":14,"units":"f"}"#);
        complete(&g, "{ \"city\" : \"Oslo\",\n\t\"days\":  3 , \"units\":\"c\"\r\n}");
        let mut m = Matcher::new(g.clone());
        assert!(m.feed(br#"{"city":"Oslo","days":3}"#));
        assert!(m.is_complete());
        assert!(!m.can_continue());
        assert!(!m.accepts(b" "));
    }

    #[test]
    fn invalid_documents_are_refused_at_the_first_wrong_byte() {
        let g = weather();
        refused_at(&g, r#"{"city":"Oslo","days":15}"#, 23);
        refused_at(&g, r#"{"town":"Oslo"}"#, 2);
        refused_at(&g, r#"{"city":1}"#, 8);
        refused_at(&g, r#"{"city":"Oslo","days":0}"#, 22);
        refused_at(&g, r#"{"city":"Oslo","days":3,"units":"k"}"#, 33);
        refused_at(&g, r#"{"city":"Oslo","days":3,}"#, 24);
        refused_at(&g, " {}", 0);
        refused_at(&g, "{   \"city\"", 3);
        refused_at(&g, r#"{"city":"Oslo","days":3} "#, 24);
        refused_at(&g, r#"{"city":"Oslo","days":3}}"#, 24);
        refused_at(&g, "[", 0);
        // A refused byte leaves the matcher as it was.
        let mut m = Matcher::new(g.clone());
        assert!(m.feed(br#"{"city":"#));
        assert!(!m.feed(b"\"a\x01"));
        assert!(m.feed(b"\"a\""));
    }

    #[test]
    fn optional_properties_may_be_skipped_but_required_ones_not() {
        let g = grammar(json!({
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
            "required": ["b"],
            "additionalProperties": false
        }));
        complete(&g, r#"{"b":1}"#);
        complete(&g, r#"{"a":1,"b":2}"#);
        complete(&g, r#"{"a":1,"b":2,"c":3}"#);
        complete(&g, r#"{"b":2,"c":3}"#);
        refused_at(&g, "{}", 1);
        refused_at(&g, r#"{"c":1}"#, 2);
        refused_at(&g, r#"{"a":1}"#, 6);
        refused_at(&g, r#"{"b":1,"a":2}"#, 8);
        refused_at(&g, r#"{"b":1,"b":2}"#, 8);
        let all_optional = grammar(json!({"type": "object", "properties": {"x": {"type": "boolean"}}}));
        complete(&all_optional, "{}");
        complete(&all_optional, r#"{"x":true}"#);
        refused_at(&all_optional, r#"{"x":true,"#, 9);
    }

    #[test]
    fn enums_and_consts_are_exact() {
        let g = grammar(json!({"enum": ["red", "green", 1, 10, null, {"k": [1]}]}));
        for ok in [r#""red""#, r#""green""#, "1", "10", "null", r#"{"k":[1]}"#] {
            complete(&g, ok);
        }
        let mut m = Matcher::new(g.clone());
        assert!(m.feed(b"1"));
        assert!(m.is_complete() && m.can_continue());
        assert!(m.feed(b"0"));
        assert!(m.is_complete() && !m.can_continue());
        refused_at(&g, "100", 2);
        refused_at(&g, r#""blue""#, 1);
        refused_at(&g, r#""re""#, 3);
        let mut m = Matcher::new(g.clone());
        assert!(m.feed(br#""red""#));
        assert!(!m.can_continue());
        let c = grammar(json!({"type": "object", "properties": {"v": {"const": "x"}}, "required": ["v"]}));
        complete(&c, r#"{"v":"x"}"#);
        refused_at(&c, r#"{"v":"y"}"#, 6);
        // Sibling keywords filter the values.
        let filtered = grammar(json!({"type": "integer", "enum": [1, 2.5, "a", 30], "maximum": 10}));
        complete(&filtered, "1");
        refused_at(&filtered, "3", 0);
        refused_at(&filtered, "\"", 0);
        let none = Grammar::from_schema(&json!({"type": "string", "enum": [1, 2]}));
        assert!(matches!(none, Err(GrammarError::Invalid { .. })), "{none:?}");
    }

    #[test]
    fn integer_bounds_accept_only_viable_prefixes() {
        let g = grammar(json!({"type": "integer", "maximum": 10}));
        complete(&g, "1");
        complete(&g, "10");
        complete(&g, "-123");
        refused_at(&g, "11", 1);
        refused_at(&g, "01", 1);
        refused_at(&g, "1.", 1);
        let g = grammar(json!({"type": "integer", "minimum": 5, "maximum": 7}));
        refused_at(&g, "1", 0);
        refused_at(&g, "-", 0);
        refused_at(&g, "8", 0);
        complete(&g, "5");
        complete(&g, "7");
        let g = grammar(json!({"type": "integer", "exclusiveMinimum": -3.5, "exclusiveMaximum": 100}));
        complete(&g, "-3");
        complete(&g, "99");
        refused_at(&g, "-0", 1);
        refused_at(&g, "-4", 1);
        refused_at(&g, "100", 2);
        let g = grammar(json!({"type": "integer", "minimum": 120}));
        refused_at(&g, "0", 0);
        refused_at(&g, "-5", 0);
        prefix(&g, "11"); // 110 is too small, 1100 is not
        prefix(&g, "12");
        complete(&g, "120");
        complete(&g, "1000");
        let unbounded = grammar(json!({"type": "integer"}));
        complete(&unbounded, "123456789012345678");
        refused_at(&unbounded, "1234567890123456789", 18);
        let none = Grammar::from_schema(&json!({"type": "integer", "minimum": 1.5, "maximum": 1.9}));
        assert!(matches!(none, Err(GrammarError::Invalid { .. })), "{none:?}");
    }

    #[test]
    fn number_bounds_and_syntax() {
        let g = grammar(json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1}));
        prefix(&g, "0");
        prefix(&g, "0.");
        prefix(&g, "0.0");
        complete(&g, "0.01");
        complete(&g, "1");
        complete(&g, "1.0");
        refused_at(&g, "1.5", 2);
        refused_at(&g, "2", 0);
        refused_at(&g, "-", 0);
        refused_at(&g, "0.5e1", 3);
        refused_at(&g, "0.1234567890123456", 17);
        let g = grammar(json!({"type": "number", "minimum": -1.25, "maximum": -1.2}));
        complete(&g, "-1.25");
        complete(&g, "-1.2");
        complete(&g, "-1.21");
        refused_at(&g, "-1.3", 3);
        refused_at(&g, "-1.251", 5);
        let free = grammar(json!({"type": "number"}));
        for ok in ["0", "-0.5", "12.25e-3", "1E+9", "7e10"] {
            complete(&free, ok);
        }
        refused_at(&free, "01", 1);
        refused_at(&free, "1.e", 2);
        refused_at(&free, "1e123", 4);
        refused_at(&free, "--1", 1);
        prefix(&free, "1e");
        prefix(&free, "-");
    }

    #[test]
    fn strings_take_escapes_and_valid_utf8_only() {
        let g = grammar(json!({"type": "string"}));
        complete(&g, r#""a\"b\\c\/\b\f\n\r\t\u00e9\uD83D\ude00""#);
        complete(&g, "\"é 日本 🎉\"");
        refused_at(&g, r#""\x""#, 2);
        assert_eq!(first_refused(&g, b"\"\x80\""), Some(1));
        assert_eq!(first_refused(&g, b"\"\xC3\""), Some(2));
        assert_eq!(first_refused(&g, b"\"\xC0\x80\""), Some(1));
        assert_eq!(first_refused(&g, b"\"\xE0\x80"), Some(2));
        assert_eq!(first_refused(&g, b"\"\xED\xA0\x80"), Some(2));
        assert_eq!(first_refused(&g, b"\"\xF5"), Some(1));
        assert_eq!(first_refused(&g, b"\"a\x01"), Some(2));
        assert_eq!(first_refused(&g, b"\"a\nb"), Some(2));
        assert_eq!(first_refused(&g, "\"é\"".as_bytes()), None);
        refused_at(&g, r#""\udc00""#, 4);
        refused_at(&g, r#""\ud800""#, 7);
        refused_at(&g, r#""\ud800\u0041""#, 9);
        refused_at(&g, r#""\u12G4""#, 5);

        let g = grammar(json!({"type": "string", "minLength": 2, "maxLength": 3}));
        refused_at(&g, r#""a""#, 2);
        complete(&g, r#""ab""#);
        complete(&g, r#""abc""#);
        complete(&g, "\"é\\n\"");
        complete(&g, r#""\ud83d\ude00\"""#);
        refused_at(&g, r#""abcd""#, 4);
        refused_at(&g, "\"é日本x\"", 9);
    }

    #[test]
    fn nested_objects_and_arrays_respect_item_counts() {
        let g = grammar(json!({
            "type": "object",
            "properties": {
                "points": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                        "required": ["x", "y"]
                    },
                    "minItems": 1,
                    "maxItems": 2
                },
                "tags": {"type": "array", "items": {"type": ["string", "null"]}}
            },
            "required": ["points"]
        }));
        complete(&g, r#"{"points":[{"x":1,"y":2.5}]}"#);
        complete(&g, r#"{"points":[ {"x":1,"y":2} , {"x":-3e2,"y":0} ],"tags":["a",null]}"#);
        complete(&g, r#"{"points":[{"x":1,"y":2}],"tags":[]}"#);
        refused_at(&g, r#"{"points":[]}"#, 11);
        refused_at(&g, r#"{"points":[{"x":1,"y":2},{"x":1,"y":2},"#, 38);
        refused_at(&g, r#"{"points":[{"y":2}]}"#, 13);
        refused_at(&g, r#"{"points":[{"x":1,"y":2}],"tags":[1]}"#, 34);
        let empty = grammar(json!({"type": "array", "maxItems": 0}));
        complete(&empty, "[]");
        refused_at(&empty, "[1", 1);
    }

    #[test]
    fn local_refs_resolve_with_recursion() {
        let g = grammar(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": "#/$defs/Node",
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2},
                        "value": {"type": "integer"}
                    },
                    "required": ["value"]
                }
            }
        }));
        complete(&g, r#"{"value":1}"#);
        complete(&g, r#"{"children":[{"children":[],"value":2},{"value":3}],"value":1}"#);
        refused_at(&g, r#"{"children":[{"children":[]}"#, 27);
        let g = grammar(json!({
            "definitions": {"Unit": {"enum": ["kg", "g"]}},
            "type": "object",
            "properties": {"unit": {"$ref": "#/definitions/Unit", "description": "which"}, "more": {"$ref": "#"}},
            "required": ["unit"]
        }));
        complete(&g, r#"{"more":{"unit":"g"},"unit":"kg"}"#);
        refused_at(&g, r#"{"unit":"lb"}"#, 9);
        let never = Grammar::from_schema(&json!({
            "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"]}},
            "$ref": "#/$defs/A"
        }));
        assert!(matches!(never, Err(GrammarError::Invalid { .. })), "{never:?}");
        // An optional property no finite document can fill is never entered.
        let g = grammar(json!({
            "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"]}},
            "type": "object",
            "properties": {"loop": {"$ref": "#/$defs/A"}, "ok": {"type": "boolean"}}
        }));
        complete(&g, r#"{"ok":true}"#);
        refused_at(&g, r#"{"l"#, 2);
    }

    #[test]
    fn any_of_follows_overlapping_alternatives() {
        let g = grammar(json!({
            "anyOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "null"}}, "required": ["a"]},
                {"type": "number", "minimum": 3, "maximum": 4}
            ]
        }));
        complete(&g, r#"{"a":1}"#);
        complete(&g, r#"{"a":"x","b":null}"#);
        complete(&g, "3.5");
        refused_at(&g, r#"{"a":true}"#, 5);
        refused_at(&g, r#"{"a":1,"b":null}"#, 6);
        refused_at(&g, "5", 0);
        let nullable =
            grammar(json!({"oneOf": [{"type": "null"}, {"$ref": "#/$defs/S"}], "$defs": {"S": {"type": "string"}}}));
        complete(&nullable, "null");
        complete(&nullable, r#""s""#);
    }

    #[test]
    fn free_objects_take_any_keys_and_values() {
        let g = Arc::new(Grammar::any_object());
        complete(&g, r#"{"a":[1,{"b":null}],"c":"d","e":-1.5e3,"f":true,"g":{}}"#);
        complete(&g, "{ }");
        refused_at(&g, "[1]", 0);
        refused_at(&g, r#""x""#, 0);
        refused_at(&g, r#"{"a"}"#, 4);
        refused_at(&g, r#"{"a":}"#, 5);
        let typed = grammar(json!({"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}));
        complete(&typed, r#"{"x":1,"y":2}"#);
        refused_at(&typed, r#"{"x":-1}"#, 5);
        let empty = grammar(json!({"type": "object", "additionalProperties": false}));
        complete(&empty, "{}");
        refused_at(&empty, r#"{""#, 1);
        let any = grammar(json!({}));
        complete(&any, "[1,\"a\",null]");
        complete(&any, "12");
    }

    #[test]
    fn unsupported_keywords_are_named_with_their_pointer() {
        let cases = [
            (
                json!({"type": "object", "properties": {"city": {"type": "string", "pattern": "^a"}}}),
                "pattern",
                "/properties/city",
            ),
            (
                json!({"type": "object", "properties": {"when": {"type": "string", "format": "date"}}}),
                "format",
                "/properties/when",
            ),
            (json!({"allOf": [{"type": "string"}]}), "allOf", ""),
            (
                json!({"type": "object", "properties": {"a": {}}, "additionalProperties": true}),
                "additionalProperties",
                "",
            ),
            (json!({"type": "array", "items": [{"type": "string"}]}), "items", ""),
            (json!({"$ref": "other.json#/x"}), "$ref", ""),
            (json!({"type": "array", "items": {"type": "integer", "multipleOf": 2}}), "multipleOf", "/items"),
            (json!({"$defs": {"a/b": {"not": {}}}, "$ref": "#/$defs/a~1b"}), "not", "/$defs/a~1b"),
            (json!({"properties": {"x~y": {"if": {}}}}), "if", "/properties/x~0y"),
            (json!({"anyOf": [{"type": "null"}], "type": "string"}), "type", ""),
        ];
        for (schema, keyword, at) in cases {
            match Grammar::from_schema(&schema) {
                Err(GrammarError::Unsupported { keyword: k, at: a }) => {
                    assert_eq!((k.as_str(), a.as_str()), (keyword, at), "{schema}");
                }
                other => panic!("{schema}: {other:?}"),
            }
        }
        let e = Grammar::from_schema(&json!({"type": "string", "pattern": "x"})).unwrap_err();
        assert!(e.to_string().contains("`pattern`"), "{e}");
        for bad in [json!({"type": "text"}), json!({"$ref": "#/$defs/Missing"}), json!(3), json!({"minLength": -1})] {
            assert!(matches!(Grammar::from_schema(&bad), Err(GrammarError::Invalid { .. })), "{bad}");
        }
    }

    /// A small validator for the supported subset (`oneOf` as `anyOf`).
    fn valid(schema: &Value, root: &Value, v: &Value) -> bool {
        let Value::Object(s) = schema else { return schema == &Value::Bool(true) };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            return valid(root.pointer(&r[1..]).expect("ref"), root, v);
        }
        if s.get("enum").and_then(Value::as_array).is_some_and(|e| !e.contains(v)) {
            return false;
        }
        if s.get("const").is_some_and(|c| c != v) {
            return false;
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = s.get(key).and_then(Value::as_array)
                && !alts.iter().any(|a| valid(a, root, v))
            {
                return false;
            }
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(t) => vec![t.as_str()],
                _ => t.as_array().expect("types").iter().map(|t| t.as_str().expect("type")).collect(),
            };
            let fits = |t: &str| match (t, v) {
                ("object", Value::Object(_))
                | ("array", Value::Array(_))
                | ("string", Value::String(_))
                | ("number", Value::Number(_))
                | ("boolean", Value::Bool(_))
                | ("null", Value::Null) => true,
                ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
                _ => false,
            };
            if !types.into_iter().any(fits) {
                return false;
            }
        }
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        let int = |k: &str| s.get(k).and_then(Value::as_u64);
        match v {
            Value::Object(o) => {
                let props = s.get("properties").and_then(Value::as_object);
                let required = s.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
                if required.iter().any(|r| !o.contains_key(r.as_str().expect("name"))) {
                    return false;
                }
                o.iter().all(|(k, val)| match props.and_then(|p| p.get(k)) {
                    Some(p) => valid(p, root, val),
                    None => match s.get("additionalProperties") {
                        None | Some(Value::Bool(true)) => props.is_none(),
                        Some(extra) => valid(extra, root, val),
                    },
                })
            }
            Value::Array(a) => {
                let items = s.get("items").cloned().unwrap_or(Value::Bool(true));
                int("minItems").is_none_or(|m| a.len() as u64 >= m)
                    && int("maxItems").is_none_or(|m| a.len() as u64 <= m)
                    && a.iter().all(|x| valid(&items, root, x))
            }
            Value::String(text) => {
                let chars = text.chars().count() as u64;
                int("minLength").is_none_or(|m| chars >= m) && int("maxLength").is_none_or(|m| chars <= m)
            }
            Value::Number(n) => {
                let x = n.as_f64().expect("finite");
                num("minimum").is_none_or(|m| x >= m)
                    && num("maximum").is_none_or(|m| x <= m)
                    && num("exclusiveMinimum").is_none_or(|m| x > m)
                    && num("exclusiveMaximum").is_none_or(|m| x < m)
            }
            _ => true,
        }
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }
    }

    /// Random allowed bytes until the document is complete; after `calm` steps it prefers
    /// closing bytes and avoids opening new containers, so it ends.
    fn random_document(g: &Arc<Grammar>, rng: &mut Rng, calm: usize) -> Vec<u8> {
        let mut m = Matcher::new(g.clone());
        let mut out = Vec::new();
        for step in 0..20_000 {
            let allowed: Vec<u8> = (0..=255u8).filter(|&b| m.accepts(&[b])).collect();
            assert_eq!(!allowed.is_empty(), m.can_continue());
            if m.is_complete() && (allowed.is_empty() || step > calm || rng.below(6) == 0) {
                return out;
            }
            assert!(!allowed.is_empty(), "dead end after {:?}", String::from_utf8_lossy(&out));
            let mut pool = allowed.clone();
            if step > calm {
                let closing: Vec<u8> = allowed.iter().copied().filter(|b| b"\"}]".contains(b)).collect();
                let quiet: Vec<u8> = allowed.iter().copied().filter(|b| !b"{[ \n\t\r\\".contains(b)).collect();
                pool = if !closing.is_empty() {
                    closing
                } else if !quiet.is_empty() {
                    quiet
                } else {
                    allowed
                };
            }
            let b = pool[rng.below(pool.len())];
            assert!(m.feed(&[b]));
            out.push(b);
        }
        panic!("no end after {:?}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn random_walks_produce_valid_documents() {
        let schemas = [
            json!({
                "type": "object",
                "properties": {
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "extra": {"type": ["string", "null"]},
                    "kind": {"enum": ["a", "b", 1, 10, null, true]},
                    "name": {"type": "string", "minLength": 1, "maxLength": 8},
                    "nested": {"type": "object", "properties": {"x": {"type": "boolean"}}, "required": ["x"]},
                    "score": {"type": "number", "minimum": -1.5, "exclusiveMaximum": 2},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 3}
                },
                "required": ["age", "name"]
            }),
            json!({
                "$defs": {"Node": {
                    "type": "object",
                    "properties": {
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2},
                        "value": {"type": "integer", "exclusiveMinimum": -5}
                    },
                    "required": ["value"]
                }},
                "$ref": "#/$defs/Node"
            }),
            json!({"anyOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"type": "number", "minimum": 3, "maximum": 4}
            ]}),
            json!({"type": "object"}),
            json!({"type": "integer", "minimum": -20, "maximum": 7}),
            json!({"type": "number", "exclusiveMinimum": 0.1, "maximum": 0.3}),
            json!({"type": "string", "minLength": 2, "maxLength": 5}),
            json!({"type": "array", "items": {"type": "number"}, "minItems": 2}),
        ];
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        for schema in &schemas {
            let g = grammar(schema.clone());
            for calm in [0, 20, 80] {
                for _ in 0..15 {
                    let out = random_document(&g, &mut rng, calm);
                    let value: Value = serde_json::from_slice(&out)
                        .unwrap_or_else(|e| panic!("{schema}: {:?}: {e}", String::from_utf8_lossy(&out)));
                    assert!(valid(schema, schema, &value), "{schema}: {value}");
                }
            }
        }
    }

    fn vocabulary() -> Vec<Option<Vec<u8>>> {
        let mut tokens: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
        let words = [
            "{\"",
            "\":",
            "\",",
            "\"}",
            " \"",
            "\":\"",
            "true",
            "null",
            "false",
            "12",
            "0.5",
            "-1",
            "é",
            "\n",
            "  ",
            "   ",
            "\\\"",
            "\\u00",
            "\\ud83d",
            "city",
            "name",
            "\"name\":\"",
            "},{",
            "[{",
            "]}",
            "}]",
            "1e5",
            "Oslo",
            "ab",
            "abc",
            "abcd",
            "\"tags\":[\"",
            "\"]",
            ", ",
            ",\n  ",
            "10",
            "100",
            "\"age\":",
            "\"extra\":null}",
        ];
        tokens.extend(words.iter().map(|w| Some(w.as_bytes().to_vec())));
        tokens.push(Some(vec![0xC3]));
        tokens.push(Some(vec![0xA9, b'"']));
        tokens.push(None);
        tokens.push(Some(Vec::new()));
        tokens.push(Some(b"true".to_vec()));
        tokens
    }

    #[test]
    fn mask_equals_accepts_on_each_token() {
        let tokens = vocabulary();
        let trie = TokenTrie::new(&tokens);
        assert_eq!(trie.len(), tokens.len());
        assert!(!trie.is_empty());
        let schema = json!({
            "type": "object",
            "properties": {
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "extra": {"type": ["string", "null"]},
                "name": {"type": "string", "maxLength": 8},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["name"]
        });
        let cases = [
            (grammar(schema), r#"{"age":  10,"extra":null,"name":"é\u00e9\"x","tags":["a","b"]}"#),
            (Arc::new(Grammar::any_object()), "{\"a\": [1, {\"b\": null}], \"c\": -0.5e3, \"d\": \"\\ud83d\\ude00\"}"),
        ];
        let mut allowed = vec![false; trie.len()];
        let mut some_allowed = 0;
        for (g, doc) in cases {
            let mut m = Matcher::new(g.clone());
            for (i, b) in doc.bytes().enumerate() {
                m.mask(&trie, &mut allowed);
                for (id, token) in tokens.iter().enumerate() {
                    let want = token.as_ref().is_some_and(|t| !t.is_empty() && m.accepts(t));
                    assert_eq!(allowed[id], want, "token {id} {token:?} after {:?}", &doc[..i]);
                }
                some_allowed += allowed.iter().filter(|a| **a).count();
                assert!(m.feed(&[b]));
            }
            assert!(m.is_complete());
            m.mask(&trie, &mut allowed);
            assert!(allowed.iter().all(|a| !a));
        }
        assert!(some_allowed > 0);
    }

    #[test]
    fn number_widths_in_format_are_read_as_widths_and_unsigned_ones_as_at_least_zero() {
        let g = grammar(json!({"type": "integer", "format": "uint64"}));
        assert!(Matcher::new(g.clone()).accepts(b"12"));
        assert!(!Matcher::new(g.clone()).accepts(b"-1"), "unsigned");
        assert!(!Matcher::new(g).accepts(b"-0"), "no negative zero for integers");
        let g = grammar(json!({"type": "integer", "format": "uint8", "maximum": 300}));
        assert!(Matcher::new(g.clone()).accepts(b"255"));
        assert!(!Matcher::new(g).accepts(b"256"), "a u8 ends at 255");
        let g = grammar(json!({"type": ["number", "null"], "format": "double"}));
        assert!(Matcher::new(g).accepts(b"-1.5"));
        let e = Grammar::from_schema(&json!({"type": "string", "format": "uint64"})).unwrap_err();
        assert!(e.to_string().contains("format"), "{e}");
    }
}
