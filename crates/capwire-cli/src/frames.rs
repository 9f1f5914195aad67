//! `capwire frames decode|encode`: capwire/1 frames between wire bytes and
//! JSON, for reading captures and writing test input.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;
use capwire::attestation::{Attestation, TransportKind};
use capwire::proto::{codec, Codec, Framing};
use capwire::transport::{self, Transport, TransportConfig};

/// One decoded frame as `frames decode` prints it.
#[derive(serde::Serialize)]
struct Printed<'a> {
    /// Position in the input, from 1.
    n: u64,
    codec: Codec,
    bytes: usize,
    frame: &'a capwire::proto::Frame,
}

/// Prints every frame; a frame that does not decode is reported and skipped,
/// a framing error ends the input (the stream is out of sync after one).
pub(crate) async fn decode(mut t: Transport) -> anyhow::Result<ExitCode> {
    let mut n = 0u64;
    let mut bad = 0u64;
    loop {
        let frame = match t.receiver.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                eprintln!("capwire: after {n} frames: {e}");
                return Ok(ExitCode::FAILURE);
            }
        };
        n += 1;
        match codec::decode(&frame) {
            Ok((decoded, codec)) => {
                let printed = Printed {
                    n,
                    codec,
                    bytes: frame.len(),
                    frame: &decoded,
                };
                let mut text = serde_json::to_string_pretty(&printed)?;
                text.push('\n');
                let mut stdout = std::io::stdout().lock();
                if let Err(e) = stdout.write_all(text.as_bytes()) {
                    // A reader that went away (`| head`) is not an error.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Err(e.into());
                }
            }
            Err(e) => {
                bad += 1;
                eprintln!("capwire: frame {n} ({} bytes): {e}", frame.len());
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads JSON frames, one per line, and writes them encoded through the stdio transport.
pub(crate) async fn encode(codec: Codec, framing: Framing) -> anyhow::Result<ExitCode> {
    if framing == Framing::Ndjson && codec == Codec::Msgpack {
        anyhow::bail!("ndjson framing carries JSON frames only: use --codec json");
    }
    let out = transport::stdio(&TransportConfig::default().framing(framing));
    let input_config = TransportConfig::default().framing(Framing::Ndjson);
    let mut input = transport::stream_transport(
        tokio::io::stdin(),
        tokio::io::sink(),
        Attestation::new(TransportKind::Stdio),
        &input_config,
    );
    let mut line = 0u64;
    while let Some(text) = input.receiver.recv().await? {
        line += 1;
        let (frame, _) = codec::decode(&text).with_context(|| format!("line {line}"))?;
        let bytes = codec::encode(&frame, codec).with_context(|| format!("line {line}"))?;
        out.sender.send(Bytes::from(bytes)).await?;
    }
    out.sender.close(transport::CloseReason::normal()).await?;
    out.sender.closed().await;
    Ok(ExitCode::SUCCESS)
}
