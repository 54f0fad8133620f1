//! The serving loop on a tiny byte-level chat model: the same answers as the batch generator,
//! whatever shares the batch, and constrained replies that are valid JSON of their schema.

use std::sync::Arc;
use std::sync::mpsc::channel;

use trex_model::generate::{GenerationConfig, generate};
use trex_model::grammar::Grammar;
use trex_model::serving::{Event, Request, Server, Sink};
use trex_model::train::peft;
use trex_model::{BaseModel, Llama, LoraAdapter, Tokenizer};
use trex_sdk::types::LoraTarget;

fn load() -> (tempfile::TempDir, BaseModel) {
    let dir = tempfile::tempdir().unwrap();
    let path = trex_tests::tiny_chat_model(dir.path(), 9);
    let base = BaseModel::load(&path).unwrap();
    (dir, base)
}

fn adapter(base: &BaseModel, seed: u64) -> LoraAdapter<f32> {
    peft::random_adapter(&base.config, 4, &[LoraTarget::QProj, LoraTarget::VProj, LoraTarget::DownProj], seed)
}

/// Run `requests` through one server at once; the texts and finish reasons, in order.
fn serve_all(server: &Server<f32>, requests: Vec<Request>) -> Vec<(String, &'static str, usize)> {
    let (queue, incoming) = channel::<(Request, Sink)>();
    let (events, received) = channel::<(usize, Event)>();
    let n = requests.len();
    for (i, r) in requests.into_iter().enumerate() {
        let events = events.clone();
        queue.send((r, Box::new(move |e| events.send((i, e)).is_ok()))).unwrap();
    }
    drop((queue, events));
    server.run(&incoming);
    let mut out = vec![(String::new(), "", 0); n];
    for (i, e) in received.iter() {
        match e {
            Event::Text(t) => out[i].0.push_str(&t),
            Event::Done(f) => {
                out[i].1 = f.reason;
                out[i].2 = f.completion_tokens;
            }
        }
    }
    out
}

fn request(tokenizer: &Tokenizer, text: &str, adapter: Option<usize>, max: usize) -> Request {
    Request {
        prompt: tokenizer.encode(&tokenizer.chat_prompt(None, text).unwrap()),
        adapter,
        max_new_tokens: max,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop: Vec::new(),
        grammar: None,
    }
}

#[test]
fn token_bytes_of_a_byte_level_vocabulary_spell_the_encoded_text() {
    let (_dir, base) = load();
    let bytes = base.tokenizer.token_bytes();
    let text = "{\"name\": \"Zoë\", \"n\": [1, 2]} am er";
    let ids = base.tokenizer.encode_continuation(text);
    assert!(ids.iter().any(|&i| i >= 256), "the merges are used: {ids:?}");
    let spelled: Vec<u8> = ids.iter().flat_map(|&i| bytes[i as usize].clone().unwrap()).collect();
    assert_eq!(spelled, text.as_bytes());
    let end = base.tokenizer.eos[0] as usize;
    assert_eq!(bytes[end], None, "special tokens have no bytes");
}

#[test]
fn served_answers_equal_the_batch_generators_whatever_shares_the_batch() {
    let (_dir, base) = load();
    let (a, b) = (adapter(&base, 1), adapter(&base, 2));
    let model = Llama::new(base.config.clone(), base.weights.clone());
    let questions = ["one", "two words", "a longer question here", "four", "5"];
    // Each model's answers from the batch generator.
    let config = GenerationConfig { max_new_tokens: 10, ..GenerationConfig::default() };
    let prompts: Vec<String> = questions.iter().map(|q| base.tokenizer.chat_prompt(None, q).unwrap()).collect();
    let want: Vec<Vec<String>> = [None, Some(&a), Some(&b)]
        .iter()
        .map(|ad| {
            generate(&model, &base.tokenizer, *ad, &prompts, &config, |_| {}).into_iter().map(|g| g.text).collect()
        })
        .collect();
    let server = Server::new(model, base.tokenizer.clone(), vec![a.clone(), b.clone()], 4);
    // Mixed adapters, more requests than slots, so sequences join and leave mid-batch.
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        for (m, adapter) in [None, Some(0), Some(1)].into_iter().enumerate() {
            requests.push(request(&base.tokenizer, q, adapter, 10));
            expected.push(want[m][i].clone());
        }
    }
    let got: Vec<String> = serve_all(&server, requests).into_iter().map(|g| g.0).collect();
    assert_eq!(got, expected);
    assert!(want[0] != want[1] || want[0] != want[2], "the adapters change the answers");
}

#[test]
fn sampled_replies_under_a_schema_are_valid_json_of_it() {
    let (_dir, base) = load();
    let model = Llama::new(base.config.clone(), base.weights.clone());
    let server = Server::new(model, base.tokenizer.clone(), vec![adapter(&base, 3)], 8);
    let schema = serde_json::json!({"type": "object", "properties": {
        "answer": {"enum": ["yes", "no", "maybe"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "why": {"type": "string", "maxLength": 20}}, "required": ["answer", "score"]});
    let grammar = Arc::new(Grammar::from_schema(&schema).unwrap());
    let requests: Vec<Request> = (0..24)
        .map(|i| Request {
            temperature: 1.0,
            seed: i,
            max_new_tokens: 120,
            grammar: Some(grammar.clone()),
            adapter: (i % 2 == 0).then_some(0),
            ..request(&base.tokenizer, "judge", None, 120)
        })
        .collect();
    let mut finished = 0;
    for (i, (text, reason, _)) in serve_all(&server, requests).into_iter().enumerate() {
        if reason != "stop" {
            continue;
        }
        finished += 1;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("reply {i}: {e}: {text}"));
        assert!(["yes", "no", "maybe"].contains(&v["answer"].as_str().unwrap()), "{text}");
        let score = v["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{text}");
        if let Some(why) = v.get("why") {
            assert!(why.as_str().unwrap().chars().count() <= 20, "{text}");
        }
        assert!(v.as_object().unwrap().keys().all(|k| ["answer", "score", "why"].contains(&k.as_str())), "{text}");
    }
    assert!(finished >= 12, "only {finished} of 24 replies finished within 120 tokens");
}

#[test]
fn a_sink_that_refuses_drops_its_sequence_and_the_others_finish() {
    let (_dir, base) = load();
    let model = Llama::new(base.config.clone(), base.weights.clone());
    let server = Server::new(model, base.tokenizer.clone(), Vec::new(), 4);
    let (queue, incoming) = channel::<(Request, Sink)>();
    let (events, received) = channel::<Event>();
    queue.send((request(&base.tokenizer, "gone", None, 50), Box::new(|_| false))).unwrap();
    queue.send((request(&base.tokenizer, "here", None, 6), Box::new(move |e| events.send(e).is_ok()))).unwrap();
    drop(queue);
    server.run(&incoming);
    let all: Vec<Event> = received.iter().collect();
    assert!(matches!(all.last(), Some(Event::Done(f)) if f.completion_tokens <= 6));
}

#[test]
fn sampled_replies_under_trex_s_own_schemas_read_back_as_their_types() {
    use trex_sdk::types::{ChatMessage, DataRecipe, Proposal, TrainRecipe, TrainingExample};
    let (_dir, base) = load();
    let model = Llama::new(base.config.clone(), base.weights.clone());
    let server = Server::new(model, base.tokenizer.clone(), Vec::new(), 16);
    let schemas = trex_sdk::types::all_schemas();
    // Every published schema compiles to a grammar.
    for (name, schema) in &schemas {
        Grammar::from_schema(schema).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // What a typed reader makes of a reply: the document types a Researcher or tool returns.
    type Reads = fn(&str) -> Result<(), String>;
    fn reads<T: serde::de::DeserializeOwned>(text: &str) -> Result<(), String> {
        serde_json::from_str::<T>(text).map(drop).map_err(|e| e.to_string())
    }
    let typed: [(&str, Reads); 5] = [
        ("ChatMessage", reads::<ChatMessage>),
        ("TrainingExample", reads::<TrainingExample>),
        ("DataRecipe", reads::<DataRecipe>),
        ("TrainRecipe", reads::<TrainRecipe>),
        ("Proposal", reads::<Proposal>),
    ];
    for (name, read) in typed {
        let grammar = Arc::new(Grammar::from_schema(&schemas[name]).unwrap());
        let requests: Vec<Request> = (0..50)
            .map(|i| Request {
                temperature: 1.0,
                seed: i,
                grammar: Some(grammar.clone()),
                ..request(&base.tokenizer, name, None, 400)
            })
            .collect();
        let mut finished = 0;
        for (text, reason, _) in serve_all(&server, requests) {
            if reason == "stop" {
                finished += 1;
                read(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
            }
        }
        // A random model seldom closes a free string (ChatMessage, TrainingExample hold only
        // those), but the recipes' fields are mostly numbers and choices.
        if !["ChatMessage", "TrainingExample"].contains(&name) {
            assert!(finished >= 10, "{name}: only {finished} of 50 replies finished within 400 tokens");
        }
        eprintln!("{name}: {finished} of 50 sampled replies finished, all read back");
    }
}
