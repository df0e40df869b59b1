//! Runs the evaluation entry points of `kefu_nlp::eval` without the `kefu` binary:
//!
//! ```text
//! cargo run --release -p kefu-nlp --example nlp_eval -- intents TRAIN.csv TEST.csv MODELS_DIR
//! cargo run --release -p kefu-nlp --example nlp_eval -- sentiment TEST.csv MODELS_DIR [MODEL.bin]
//! cargo run --release -p kefu-nlp --example nlp_eval -- train-sentiment AIRLINE.csv WAIMAI.csv MODELS_DIR OUT.bin
//! ```

use std::path::Path;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&Path> = args.iter().skip(1).map(Path::new).collect();
    let line = match (args.first().map(String::as_str), a.as_slice()) {
        (Some("intents"), [train, test, models]) => kefu_nlp::eval::intents(train, test, models)?,
        (Some("sentiment"), [test, models]) => kefu_nlp::eval::sentiment(test, None, models)?,
        (Some("sentiment"), [test, models, model]) => {
            kefu_nlp::eval::sentiment(test, Some(model), models)?
        }
        (Some("train-sentiment"), [airline, waimai, models, out]) => {
            kefu_nlp::eval::train_sentiment(airline, waimai, models, out)?
        }
        _ => bail!("usage: nlp_eval intents TRAIN TEST MODELS_DIR | sentiment TEST MODELS_DIR [MODEL] | train-sentiment AIRLINE WAIMAI MODELS_DIR OUT"),
    };
    println!("{line}");
    Ok(())
}
