//! The serving loop: requests arrive at any time, each with its own adapter, sampling settings,
//! stop texts and (optionally) a grammar, and decode together in one continuous batch.
//!
//! A request joins the batch at the next step (its prompt's prefill runs in the same forward
//! pass as the others' decoding) and leaves it the step it finishes, so the batch stays as full
//! as the traffic allows. The base model's projections run once over every sequence's rows and
//! each adapter's low-rank products over the rows of the sequences that use it
//! ([`Llama::forward_cached_multi`]). Each sequence samples with its own random stream seeded by
//! its request, so its answer does not depend on what else shares its batch.
//!
//! A sequence under a [`Grammar`] may only take tokens that keep its output a valid prefix of
//! the grammar's language, and may only end once the output is whole: its reply is valid by
//! construction (unless `max_new_tokens` cuts it, which its finish reason says).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};

use trex_kernels::Real;

use crate::generate::pick;
use crate::grammar::{Grammar, Matcher, TokenTrie};
use crate::lora::SplitMix;
use crate::{KvCache, Llama, LoraAdapter, Tokenizer};

/// One sequence to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// The prompt's tokens (already formatted and encoded; at least one).
    pub prompt: Vec<u32>,
    /// Which of the loop's adapters to apply, by index; `None` for the base model.
    pub adapter: Option<usize>,
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1 keeps every token).
    pub top_p: f32,
    /// Seed of this sequence's random stream.
    pub seed: u64,
    /// Generation stops once the text contains any of these (the stop text is cut off).
    pub stop: Vec<String>,
    /// The language the output must belong to.
    pub grammar: Option<Arc<Grammar>>,
}

/// What a request's sink receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (never part of a stop text, never half a UTF-8 character).
    Text(String),
    /// The sequence finished; nothing follows.
    Done(Finish),
}

/// How a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// `stop` (an end-of-sequence token, a stop text, or a completed grammar) or `length`
    /// (`max_new_tokens`, or the model's context is full).
    pub reason: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// Where a request's events go. Returning `false` (the client went away) drops the sequence.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// A model, its adapters, and what constrained decoding needs of its vocabulary.
pub struct Server<T: Real> {
    model: Llama<T>,
    tokenizer: Tokenizer,
    adapters: Vec<LoraAdapter<T>>,
    token_bytes: Vec<Option<Vec<u8>>>,
    trie: TokenTrie,
    slots: usize,
}

impl<T: Real> std::fmt::Debug for Server<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("adapters", &self.adapters.len()).field("slots", &self.slots).finish()
    }
}

/// A sequence in the batch.
struct Running {
    request: Request,
    sink: Sink,
    /// Tokens to run through the model next: the prompt, then one token per step.
    feed: Vec<u32>,
    generated: Vec<u32>,
    /// The output's bytes so far, under a grammar (there the output is the tokens' bytes).
    bytes: Vec<u8>,
    /// Bytes of the text already sent to the sink.
    sent: usize,
    matcher: Option<Matcher>,
    rng: SplitMix,
}

impl<T: Real> Server<T> {
    /// A server over `model` with `adapters`; at most `slots` sequences decode together.
    pub fn new(model: Llama<T>, tokenizer: Tokenizer, adapters: Vec<LoraAdapter<T>>, slots: usize) -> Server<T> {
        let mut token_bytes = tokenizer.token_bytes();
        token_bytes.resize(model.config.vocab, None);
        let trie = TokenTrie::new(&token_bytes);
        Server { model, tokenizer, adapters, token_bytes, trie, slots: slots.max(1) }
    }

    /// The model.
    pub fn model(&self) -> &Llama<T> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// How many adapters it serves.
    pub fn adapters(&self) -> usize {
        self.adapters.len()
    }

    /// Serve the requests that arrive on `requests` until it is closed and every sequence has
    /// finished. Blocks while there is nothing to do.
    pub fn run(&self, requests: &Receiver<(Request, Sink)>) {
        let mut running: Vec<Running> = Vec::new();
        let mut caches: Vec<KvCache<T>> = Vec::new();
        let mut open = true;
        loop {
            // Wait for work when idle; otherwise take whatever has arrived, up to the slots.
            if running.is_empty() {
                if !open {
                    return;
                }
                match requests.recv() {
                    Ok((r, sink)) => self.admit(r, sink, &mut running, &mut caches),
                    Err(_) => return,
                }
            }
            while open && running.len() < self.slots {
                match requests.try_recv() {
                    Ok((r, sink)) => self.admit(r, sink, &mut running, &mut caches),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            if running.is_empty() {
                continue;
            }
            // Sequences of one adapter side by side, so each adapter runs over one block of rows.
            let mut paired: Vec<(Running, KvCache<T>)> = running.drain(..).zip(caches.drain(..)).collect();
            paired.sort_by_key(|(r, _)| r.request.adapter.map_or(0, |a| a + 1));
            let (mut batch, mut batch_caches): (Vec<Running>, Vec<KvCache<T>>) = paired.into_iter().unzip();
            let logits = {
                let feeds: Vec<&[u32]> = batch.iter().map(|r| r.feed.as_slice()).collect();
                let adapters: Vec<Option<&LoraAdapter<T>>> =
                    batch.iter().map(|r| r.request.adapter.map(|a| &self.adapters[a])).collect();
                self.model.forward_cached_multi(&feeds, &mut batch_caches, &adapters)
            };
            let vocab = self.model.config.vocab;
            for ((mut r, cache), row) in batch.drain(..).zip(batch_caches.drain(..)).zip(logits.chunks(vocab)) {
                let full = cache.len() + 1 >= self.model.config.max_pos;
                match self.step(&mut r, row, full) {
                    Some(reason) => {
                        let finish = Finish {
                            reason,
                            prompt_tokens: r.request.prompt.len(),
                            completion_tokens: r.generated.len(),
                        };
                        (r.sink)(Event::Done(finish));
                    }
                    None if r.feed.is_empty() => {} // the client went away
                    None => {
                        running.push(r);
                        caches.push(cache);
                    }
                }
            }
        }
    }

    fn admit(&self, request: Request, sink: Sink, running: &mut Vec<Running>, caches: &mut Vec<KvCache<T>>) {
        let start = self.tokenizer.bos.or(self.tokenizer.eos.first().copied()).unwrap_or(0);
        let feed = if request.prompt.is_empty() { vec![start] } else { request.prompt.clone() };
        let mut sink = sink;
        if request.max_new_tokens == 0 || feed.len() >= self.model.config.max_pos {
            let prompt_tokens = request.prompt.len();
            sink(Event::Done(Finish { reason: "length", prompt_tokens, completion_tokens: 0 }));
            return;
        }
        let rng = SplitMix(request.seed ^ 0x5EED_0F5E_0D15_EA5E);
        let matcher = request.grammar.clone().map(Matcher::new);
        running.push(Running { request, sink, feed, generated: Vec::new(), bytes: Vec::new(), sent: 0, matcher, rng });
        caches.push(KvCache::new(&self.model.config));
    }

    /// Pick `r`'s next token from `row`; `Some(reason)` when it finishes. Clears `r.feed` when
    /// the sink refuses an event (the client is gone).
    fn step(&self, r: &mut Running, row: &[T], context_full: bool) -> Option<&'static str> {
        let eos = |t: u32| self.tokenizer.eos.contains(&t);
        let tok = match &r.matcher {
            None => pick(row, r.request.temperature, r.request.top_p, &mut r.rng),
            Some(m) => {
                let mut allowed = vec![false; row.len()];
                m.mask(&self.trie, &mut allowed);
                if m.is_complete() {
                    for &e in &self.tokenizer.eos {
                        if let Some(a) = allowed.get_mut(e as usize) {
                            *a = true;
                        }
                    }
                }
                if !allowed.iter().any(|&a| a) {
                    // Whole and nothing may follow: the grammar is done.
                    return self.finish_text(r, "stop");
                }
                let minus_inf = T::neg_infinity();
                let masked: Vec<T> = row.iter().zip(&allowed).map(|(&v, &a)| if a { v } else { minus_inf }).collect();
                pick(&masked, r.request.temperature, r.request.top_p, &mut r.rng)
            }
        };
        if eos(tok) {
            return self.finish_text(r, "stop");
        }
        r.generated.push(tok);
        if let Some(m) = &mut r.matcher {
            let bytes = self.token_bytes[tok as usize].as_deref().unwrap_or_default();
            let fed = m.feed(bytes);
            debug_assert!(fed, "the mask allowed only tokens the matcher accepts");
            r.bytes.extend_from_slice(bytes);
        }
        let text = self.text(r);
        if let Some(pos) = r.request.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            return self.send_upto(r, &text, pos, "stop");
        }
        if r.matcher.as_ref().is_some_and(|m| m.is_complete() && !m.can_continue()) {
            return self.finish_text(r, "stop");
        }
        if r.generated.len() >= r.request.max_new_tokens || context_full {
            return self.finish_text(r, "length");
        }
        // Hold back a tail that may be the start of a stop text, or half a character.
        let mut safe = text.len();
        if text.ends_with('\u{FFFD}') {
            safe = text.trim_end_matches('\u{FFFD}').len();
        }
        for s in &r.request.stop {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..safe].ends_with(&s[..k]) {
                    safe = safe.min(text[..safe].len() - k);
                    break;
                }
            }
        }
        if safe > r.sent {
            let delta = text[r.sent..safe].to_string();
            r.sent = safe;
            if !(r.sink)(Event::Text(delta)) {
                r.feed.clear();
                return None;
            }
        }
        r.feed = vec![tok];
        None
    }

    /// The output text so far.
    fn text(&self, r: &Running) -> String {
        match r.matcher {
            Some(_) => String::from_utf8_lossy(&r.bytes).into_owned(),
            None => self.tokenizer.decode(&r.generated, true),
        }
    }

    fn finish_text(&self, r: &mut Running, reason: &'static str) -> Option<&'static str> {
        let text = self.text(r);
        let len = text.len();
        self.send_upto(r, &text, len, reason)
    }

    /// Send the text up to byte `end` that has not been sent, then finish with `reason`.
    fn send_upto(&self, r: &mut Running, text: &str, end: usize, reason: &'static str) -> Option<&'static str> {
        if end > r.sent {
            let _ = (r.sink)(Event::Text(text[r.sent..end].to_string()));
            r.sent = end;
        }
        Some(reason)
    }
}
