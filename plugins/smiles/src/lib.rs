//! `smiles`: scores generated molecules. Each output is read as one SMILES string (the first
//! whitespace-separated token, end markers stripped) and checked by a real parser:
//!
//! - syntax: atoms (the organic subset, aromatic lower case, bracket atoms with isotope,
//!   chirality, hydrogen count, charge and class), bonds `- = # $ : / \`, branches, ring
//!   closures (`1`…`9`, `%nn`), `.` between fragments;
//! - ring closures: every opened ring is closed, no atom bonds to itself or twice to the same
//!   atom;
//! - valence: the bond orders and hydrogens of each atom fit one of its allowed valences
//!   (adjusted for charge: N⁺ takes 4, O⁻ takes 1, C± takes 3, …); the organic subset gets its
//!   implicit hydrogens;
//! - aromaticity: aromatic atoms lie on a ring, and the aromatic system has a Kekulé structure
//!   (every aromatic atom that needs a double bond gets exactly one), so `c1ccnc1` is refused
//!   while `c1cc[nH]c1` is accepted.
//!
//! Valid molecules are keyed by a graph invariant (Weisfeiler–Lehman hashing over element,
//! charge, hydrogens, aromaticity and bond orders), so two spellings of one molecule share a
//! key. `novel` compares keys with a reference set (the training molecules, read once from the
//! dataset folder). The aggregate reports `validity`, `uniqueness` (distinct keys among valid
//! outputs) and `novelty` (share of those not in the reference), and scores the share of
//! outputs that are valid, the first of their kind, and novel.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{Aggregate, EvalItem, Evaluator, ExampleResult, PluginError};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// The reference molecules (the training set) for novelty: a file in the dataset folder, one
    /// SMILES per line or a CSV with a `reference_column`; `.gz` is read too. Empty: no novelty
    /// check.
    reference: String,
    /// The CSV column holding the SMILES (ignored for a plain list).
    reference_column: String,
    /// Strip these markers from the output before reading it.
    strip_markers: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            reference: String::new(),
            reference_column: "SMILES".into(),
            strip_markers: ["<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|>"].map(String::from).to_vec(),
        }
    }
}

#[derive(Debug, Clone)]
struct Atom {
    element: String,
    aromatic: bool,
    charge: i32,
    /// Explicit hydrogens (bracket atoms); `None` for the organic subset (implicit).
    hydrogens: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    Single,
    Double,
    Triple,
    Quadruple,
    Aromatic,
}

impl Order {
    fn value(self) -> u32 {
        match self {
            Order::Single | Order::Aromatic => 1,
            Order::Double => 2,
            Order::Triple => 3,
            Order::Quadruple => 4,
        }
    }
}

#[derive(Debug, Default)]
struct Mol {
    atoms: Vec<Atom>,
    bonds: Vec<(usize, usize, Order)>,
}

/// Why a string is not a valid molecule: (tag, detail).
type Invalid = (&'static str, String);

fn invalid<T>(tag: &'static str, detail: impl Into<String>) -> Result<T, Invalid> {
    Err((tag, detail.into()))
}

const ORGANIC: &[&str] = &["Cl", "Br", "B", "C", "N", "O", "P", "S", "F", "I"];
const AROMATIC: &[&str] = &["b", "c", "n", "o", "p", "s"];

fn parse(s: &str) -> Result<Mol, Invalid> {
    let b = s.as_bytes();
    let mut mol = Mol::default();
    let mut i = 0;
    let mut prev: Option<usize> = None;
    let mut stack: Vec<Option<usize>> = Vec::new();
    let mut pending: Option<Order> = None;
    let mut rings: HashMap<u32, (usize, Option<Order>)> = HashMap::new();
    while i < b.len() {
        let c = b[i] as char;
        match c {
            '(' => {
                if prev.is_none() {
                    return invalid("invalid-syntax", format!("branch with no atom before it at {i}"));
                }
                stack.push(prev);
                i += 1;
            }
            ')' => {
                if pending.is_some() {
                    return invalid("invalid-syntax", format!("bond before `)` at {i}"));
                }
                prev = stack.pop().ok_or(("invalid-syntax", format!("unmatched `)` at {i}")))?;
                i += 1;
            }
            '-' | '=' | '#' | '$' | ':' | '/' | '\\' => {
                if pending.is_some() || prev.is_none() {
                    return invalid("invalid-syntax", format!("misplaced bond `{c}` at {i}"));
                }
                pending = Some(match c {
                    '=' => Order::Double,
                    '#' => Order::Triple,
                    '$' => Order::Quadruple,
                    ':' => Order::Aromatic,
                    _ => Order::Single,
                });
                i += 1;
            }
            '.' => {
                if pending.is_some() || prev.is_none() {
                    return invalid("invalid-syntax", format!("misplaced `.` at {i}"));
                }
                prev = None;
                i += 1;
            }
            '0'..='9' | '%' => {
                let Some(atom) = prev else {
                    return invalid("invalid-syntax", format!("ring number with no atom at {i}"));
                };
                let (label, len) = if c == '%' {
                    let digits = s.get(i + 1..i + 3).filter(|d| d.bytes().all(|x| x.is_ascii_digit()));
                    let d = digits.ok_or(("invalid-syntax", format!("`%` needs two digits at {i}")))?;
                    (d.parse::<u32>().expect("two digits"), 3)
                } else {
                    (c.to_digit(10).expect("digit"), 1)
                };
                match rings.remove(&label) {
                    None => {
                        rings.insert(label, (atom, pending.take()));
                    }
                    Some((other, order)) => {
                        let order = match (order, pending.take()) {
                            (Some(a), Some(b)) if a != b && a.value() != b.value() => {
                                return invalid(
                                    "invalid-syntax",
                                    format!("ring {label} closes with two different bonds"),
                                );
                            }
                            (Some(a), _) | (None, Some(a)) => a,
                            (None, None) => default_order(&mol, other, atom),
                        };
                        add_bond(&mut mol, other, atom, order)?;
                    }
                }
                i += len;
            }
            '[' => {
                let end = s[i..].find(']').ok_or(("invalid-syntax", format!("unclosed `[` at {i}")))? + i;
                let atom = bracket_atom(&s[i + 1..end])?;
                i = end + 1;
                push_atom(&mut mol, atom, &mut prev, &mut pending)?;
            }
            _ => {
                let two = s.get(i..i + 2).unwrap_or("");
                let (symbol, len) =
                    if two == "Cl" || two == "Br" { (two, 2) } else { (s.get(i..i + 1).unwrap_or(""), 1) };
                let aromatic = AROMATIC.contains(&symbol);
                if !aromatic && !ORGANIC.contains(&symbol) {
                    return invalid(
                        "invalid-syntax",
                        format!("unknown atom `{symbol}` at {i} (other elements go in brackets)"),
                    );
                }
                let element = if aromatic { symbol.to_uppercase() } else { symbol.to_string() };
                push_atom(&mut mol, Atom { element, aromatic, charge: 0, hydrogens: None }, &mut prev, &mut pending)?;
                i += len;
            }
        }
    }
    if mol.atoms.is_empty() {
        return invalid("invalid-syntax", "no atoms");
    }
    if pending.is_some() {
        return invalid("invalid-syntax", "the string ends with a bond");
    }
    if !stack.is_empty() {
        return invalid("invalid-syntax", "unclosed `(`");
    }
    if let Some(label) = rings.keys().next() {
        return invalid("unclosed-ring", format!("ring {label} is opened and never closed"));
    }
    Ok(mol)
}

fn default_order(mol: &Mol, a: usize, b: usize) -> Order {
    if mol.atoms[a].aromatic && mol.atoms[b].aromatic { Order::Aromatic } else { Order::Single }
}

fn add_bond(mol: &mut Mol, a: usize, b: usize, order: Order) -> Result<(), Invalid> {
    if a == b {
        return invalid("unclosed-ring", format!("atom {a} bonds to itself"));
    }
    if mol.bonds.iter().any(|&(x, y, _)| (x, y) == (a, b) || (x, y) == (b, a)) {
        return invalid("unclosed-ring", format!("atoms {a} and {b} are bonded twice"));
    }
    mol.bonds.push((a, b, order));
    Ok(())
}

fn push_atom(mol: &mut Mol, atom: Atom, prev: &mut Option<usize>, pending: &mut Option<Order>) -> Result<(), Invalid> {
    let id = mol.atoms.len();
    mol.atoms.push(atom);
    if let Some(p) = *prev {
        let order = pending.take().unwrap_or_else(|| default_order(mol, p, id));
        add_bond(mol, p, id, order)?;
    }
    *prev = Some(id);
    Ok(())
}

/// `[13CH3+]`, `[nH]`, `[C@@H]`, `[O-]`, `[NH4+:1]`.
fn bracket_atom(body: &str) -> Result<Atom, Invalid> {
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let rest = &body[i..];
    let two = rest.as_bytes().get(..2).unwrap_or(&[]);
    // `Cl`, `Br`, `Na`, … (an upper-case letter and a lower-case one), or aromatic `se`, `as`.
    let pair = two.len() == 2 && two[0].is_ascii_uppercase() && two[1].is_ascii_lowercase();
    let symbol_len = if pair || two == b"se" || two == b"as" { 2 } else { 1 };
    let symbol = rest
        .get(..symbol_len)
        .filter(|s| !s.is_empty())
        .ok_or(("invalid-syntax", format!("no element in [{body}]")))?;
    if !symbol.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return invalid("invalid-syntax", format!("no element in [{body}]"));
    }
    let aromatic = symbol.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let element = if aromatic { symbol[..1].to_uppercase() + &symbol[1..] } else { symbol.to_string() };
    let mut i = i + symbol_len;
    while i < b.len() && b[i] == b'@' {
        i += 1;
    }
    let mut hydrogens = 0;
    if i < b.len() && b[i] == b'H' {
        i += 1;
        hydrogens = 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i > start {
            hydrogens = body[start..i].parse().unwrap_or(1);
        }
    }
    let mut charge = 0i32;
    while i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        let sign = if b[i] == b'+' { 1 } else { -1 };
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        charge += sign * if i > start { body[start..i].parse::<i32>().unwrap_or(1) } else { 1 };
    }
    if i < b.len() && b[i] == b':' {
        i = b.len();
    }
    if i != b.len() {
        return invalid("invalid-syntax", format!("cannot read [{body}]"));
    }
    Ok(Atom { element, aromatic, charge, hydrogens: Some(hydrogens) })
}

/// Allowed valences of an element, adjusted for its charge; `None` when trex does not check it.
fn valences(element: &str, charge: i32) -> Option<Vec<i32>> {
    let base: &[i32] = match element {
        "C" => &[4],
        "N" => &[3],
        "O" => &[2],
        "S" => &[2, 4, 6],
        "P" => &[3, 5],
        "B" => &[3],
        "F" | "Cl" | "Br" => &[1],
        "I" => &[1, 3, 5],
        _ => return None,
    };
    Some(
        base.iter()
            .map(|&v| match element {
                "C" => v - charge.abs(),
                "B" => v - charge,
                _ => v + charge,
            })
            .filter(|&v| v >= 0)
            .collect(),
    )
}

/// Check valences, ring membership of aromatic atoms, and the Kekulé structure; returns the
/// hydrogens of each atom.
fn check(mol: &Mol) -> Result<Vec<u32>, Invalid> {
    let n = mol.atoms.len();
    let mut bond_sum = vec![0i32; n];
    let mut aromatic_bonds = vec![0i32; n];
    let mut exocyclic_double = vec![false; n];
    for &(a, b, o) in &mol.bonds {
        for x in [a, b] {
            if o == Order::Aromatic {
                aromatic_bonds[x] += 1;
            } else {
                bond_sum[x] += o.value() as i32;
                if o.value() >= 2 {
                    exocyclic_double[x] = true;
                }
            }
        }
    }
    let ring_atoms = in_rings(mol);
    let mut hydrogens = vec![0u32; n];
    let mut needs_pi = vec![false; n];
    for (i, atom) in mol.atoms.iter().enumerate() {
        let allowed = valences(&atom.element, atom.charge);
        if atom.aromatic {
            if !ring_atoms[i] {
                return invalid("aromaticity", format!("aromatic atom {i} ({}) is not in a ring", atom.element));
            }
            let h = atom.hydrogens.unwrap_or(0) as i32;
            let base = bond_sum[i] + aromatic_bonds[i] + h;
            let Some(allowed) = allowed else { continue };
            let v = *allowed.iter().min().unwrap_or(&0);
            // A double bond inside the ring when the atom has room for one and no exocyclic one.
            needs_pi[i] = !exocyclic_double[i] && base < v && aromatic_bonds[i] >= 2;
            let used = base + i32::from(needs_pi[i]);
            if atom.hydrogens.is_none() {
                // Organic-subset aromatic atom: implicit hydrogens fill up to the valence, but
                // only carbon (and boron) take them; `n`, `o`, `s`, `p` with room stay as they are.
                if used < v && matches!(atom.element.as_str(), "C" | "B") {
                    hydrogens[i] = (v - used) as u32;
                }
            } else {
                hydrogens[i] = h as u32;
            }
            if used > *allowed.iter().max().unwrap_or(&0) {
                return invalid(
                    "valence",
                    format!("atom {i} ({}) has valence {used}, more than it allows", atom.element),
                );
            }
        } else {
            let sum = bond_sum[i] + aromatic_bonds[i];
            let Some(allowed) = allowed else {
                hydrogens[i] = atom.hydrogens.unwrap_or(0);
                continue;
            };
            match atom.hydrogens {
                Some(h) => {
                    let total = sum + h as i32;
                    if !allowed.iter().any(|&v| total <= v) {
                        return invalid(
                            "valence",
                            format!(
                                "atom {i} ({}{}) has valence {total}, allowed {allowed:?}",
                                atom.element,
                                charge_text(atom.charge)
                            ),
                        );
                    }
                    hydrogens[i] = h;
                }
                None => match allowed.iter().find(|&&v| v >= sum) {
                    Some(&v) => hydrogens[i] = (v - sum) as u32,
                    None => {
                        return invalid(
                            "valence",
                            format!("atom {i} ({}) has valence {sum}, allowed {allowed:?}", atom.element),
                        );
                    }
                },
            }
        }
    }
    kekulize(mol, &needs_pi)?;
    Ok(hydrogens)
}

fn charge_text(c: i32) -> String {
    match c {
        0 => String::new(),
        c if c > 0 => format!("+{c}"),
        c => c.to_string(),
    }
}

/// Whether each atom lies on a cycle (has an incident bond that is not a bridge).
fn in_rings(mol: &Mol) -> Vec<bool> {
    let n = mol.atoms.len();
    let mut adj: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (e, &(a, b, _)) in mol.bonds.iter().enumerate() {
        adj[a].push((b, e));
        adj[b].push((a, e));
    }
    let (mut disc, mut low) = (vec![usize::MAX; n], vec![0usize; n]);
    let mut bridge = vec![false; mol.bonds.len()];
    let mut time = 0;
    for root in 0..n {
        if disc[root] != usize::MAX {
            continue;
        }
        // Iterative DFS: (node, parent edge, next neighbour index).
        let mut stack = vec![(root, usize::MAX, 0usize)];
        disc[root] = time;
        low[root] = time;
        time += 1;
        while let Some(&mut (v, pe, ref mut next)) = stack.last_mut() {
            if *next < adj[v].len() {
                let (w, e) = adj[v][*next];
                *next += 1;
                if e == pe {
                    continue;
                }
                if disc[w] == usize::MAX {
                    disc[w] = time;
                    low[w] = time;
                    time += 1;
                    stack.push((w, e, 0));
                } else {
                    low[v] = low[v].min(disc[w]);
                }
            } else {
                stack.pop();
                if let Some(&(p, _, _)) = stack.last() {
                    low[p] = low[p].min(low[v]);
                    if low[v] > disc[p] {
                        bridge[pe] = true;
                    }
                }
            }
        }
    }
    let mut ring = vec![false; n];
    for (e, &(a, b, _)) in mol.bonds.iter().enumerate() {
        if !bridge[e] {
            ring[a] = true;
            ring[b] = true;
        }
    }
    ring
}

/// Give every aromatic atom that needs a double bond exactly one, along aromatic bonds to
/// another such atom (a perfect matching, found by backtracking with a step cap).
fn kekulize(mol: &Mol, needs_pi: &[bool]) -> Result<(), Invalid> {
    let n = mol.atoms.len();
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b, o) in &mol.bonds {
        if o == Order::Aromatic && needs_pi[a] && needs_pi[b] {
            adj[a].push(b);
            adj[b].push(a);
        }
    }
    let mut mate = vec![usize::MAX; n];
    let mut steps = 0u32;
    fn solve(i: usize, needs: &[bool], adj: &[Vec<usize>], mate: &mut [usize], steps: &mut u32) -> Option<bool> {
        *steps += 1;
        if *steps > 200_000 {
            return None;
        }
        let Some(v) = (i..needs.len()).find(|&v| needs[v] && mate[v] == usize::MAX) else { return Some(true) };
        for &w in &adj[v] {
            if mate[w] == usize::MAX {
                mate[v] = w;
                mate[w] = v;
                match solve(v + 1, needs, adj, mate, steps) {
                    Some(true) => return Some(true),
                    None => return None,
                    Some(false) => {}
                }
                mate[v] = usize::MAX;
                mate[w] = usize::MAX;
            }
        }
        Some(false)
    }
    match solve(0, needs_pi, &adj, &mut mate, &mut steps) {
        Some(false) => invalid("aromaticity", "the aromatic rings have no Kekulé structure (a missing [nH]?)"),
        // Too many alternatives to settle: accept rather than refuse a molecule wrongly.
        Some(true) | None => Ok(()),
    }
}

/// A graph invariant: Weisfeiler–Lehman hashing over atom labels and bond orders.
fn graph_key(mol: &Mol, hydrogens: &[u32]) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let text_hash =
        |s: &str| s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let n = mol.atoms.len();
    let mut adj: Vec<Vec<(usize, u64)>> = vec![Vec::new(); n];
    for &(a, b, o) in &mol.bonds {
        let code = match o {
            Order::Aromatic => 5,
            other => u64::from(other.value()),
        };
        adj[a].push((b, code));
        adj[b].push((a, code));
    }
    let mut labels: Vec<u64> = mol
        .atoms
        .iter()
        .zip(hydrogens)
        .map(|(a, &h)| {
            mix(text_hash(&a.element)
                ^ (u64::from(a.aromatic) << 8)
                ^ ((a.charge as i64 as u64) << 16)
                ^ (u64::from(h) << 40))
        })
        .collect();
    for _ in 0..4 {
        labels = (0..n)
            .map(|v| {
                let mut around: Vec<u64> =
                    adj[v].iter().map(|&(w, code)| mix(labels[w] ^ code.wrapping_mul(0x9e37))).collect();
                around.sort_unstable();
                around.iter().fold(mix(labels[v]), |h, &x| mix(h.rotate_left(7) ^ x))
            })
            .collect();
    }
    labels.sort_unstable();
    labels.iter().fold(n as u64, |h, &x| mix(h ^ x))
}

/// The key of a valid SMILES string, or why it is not valid.
fn molecule_key(smiles: &str) -> Result<u64, Invalid> {
    let mol = parse(smiles)?;
    let hydrogens = check(&mol)?;
    Ok(graph_key(&mol, &hydrogens))
}

/// Keys of the reference molecules, read once per instance.
static REFERENCE: OnceLock<Result<HashSet<u64>, String>> = OnceLock::new();

fn reference(config: &Config) -> Result<Option<&'static HashSet<u64>>, PluginError> {
    if config.reference.is_empty() {
        return Ok(None);
    }
    let set = REFERENCE.get_or_init(|| read_reference(config));
    set.as_ref().map(Some).map_err(|e| PluginError::field("reference", e.clone()))
}

fn read_reference(config: &Config) -> Result<HashSet<u64>, String> {
    use std::io::Read;
    if config.reference.contains("..") || config.reference.starts_with('/') {
        return Err(format!("`{}` must be a path inside the dataset folder", config.reference));
    }
    let path = format!("/data/{}", config.reference);
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("cannot read {path}: {e} (does the plugin get the dataset folder?)"))?;
    let mut text = String::new();
    let read = if config.reference.ends_with(".gz") {
        flate2::read::GzDecoder::new(file).read_to_string(&mut text)
    } else {
        std::io::BufReader::new(file).read_to_string(&mut text)
    };
    read.map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut lines = text.lines();
    let csv = config.reference.trim_end_matches(".gz").ends_with(".csv");
    let column = if csv {
        let header = lines.next().unwrap_or("");
        header
            .split(',')
            .position(|h| h.trim() == config.reference_column)
            .ok_or(format!("{path} has no column `{}` (header: {header})", config.reference_column))?
    } else {
        0
    };
    Ok(lines.filter_map(|l| l.split(',').nth(column)).filter_map(|s| molecule_key(s.trim()).ok()).collect())
}

/// The SMILES in a model output: the first token after the markers are stripped.
fn extract(config: &Config, output: &str) -> String {
    let mut text = output.to_string();
    for m in &config.strip_markers {
        text = text.replace(m.as_str(), " ");
    }
    text.split_whitespace().next().unwrap_or("").to_string()
}

struct Smiles;

impl Evaluator for Smiles {
    type Config = Config;
    const NAME: &'static str = "smiles";
    const DESCRIPTION: &'static str = "Molecule generation: each output is parsed as SMILES (syntax, ring closures, valence, aromaticity); valid molecules are keyed by a graph invariant for uniqueness and for novelty against a reference set. Failures are tagged empty-output, invalid-syntax, unclosed-ring, valence, aromaticity or not-novel.";

    fn evaluate(config: &Config, items: Vec<EvalItem>) -> Result<Vec<ExampleResult>, PluginError> {
        let known = reference(config)?;
        Ok(items
            .into_iter()
            .map(|item| {
                let smiles = extract(config, &item.output);
                let (passed, tag, explanation) = if smiles.is_empty() {
                    (false, Some("empty-output"), "the output is empty".to_string())
                } else {
                    match molecule_key(&smiles) {
                        Err((tag, detail)) => (false, Some(tag), format!("`{smiles}`: {detail}")),
                        Ok(key) if known.is_some_and(|k| k.contains(&key)) => {
                            (false, Some("not-novel"), format!("key {key:016x}: `{smiles}` is in the reference set"))
                        }
                        Ok(key) => (true, None, format!("key {key:016x}: `{smiles}` is a valid molecule")),
                    }
                };
                ExampleResult {
                    id: item.id,
                    score: if passed { 1.0 } else { 0.0 },
                    passed,
                    tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
                    explanation,
                }
            })
            .collect())
    }

    fn aggregate(_config: &Config, results: &[ExampleResult]) -> Result<Aggregate, PluginError> {
        let key_of = |r: &ExampleResult| r.explanation.strip_prefix("key ").and_then(|k| k.get(..16)).map(String::from);
        let valid: Vec<(String, bool)> =
            results.iter().filter_map(|r| key_of(r).map(|k| (k, r.tags.iter().all(|t| t != "not-novel")))).collect();
        let mut seen = HashSet::new();
        let (mut unique, mut unique_novel, mut counted) = (0usize, 0usize, 0u64);
        for (key, novel) in &valid {
            if seen.insert(key.clone()) {
                unique += 1;
                if *novel {
                    unique_novel += 1;
                    counted += 1;
                }
            }
        }
        let total = results.len().max(1) as f64;
        let mut agg = Aggregate::mean(results);
        agg.score = counted as f64 / total;
        agg.passed = counted;
        agg.metrics.insert("validity".into(), valid.len() as f64 / total);
        agg.metrics.insert("uniqueness".into(), unique as f64 / valid.len().max(1) as f64);
        agg.metrics.insert("novelty".into(), unique_novel as f64 / unique.max(1) as f64);
        Ok(agg)
    }
}

trex_sdk::export_evaluator!(Smiles);
