//! Uploads through a sink: the server hands out a sink for a file, the client
//! writes chunks with credit flow control, then downloads them as a stream.
//!
//! `cargo run -p capwire --example file_upload`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use capwire::transport::{self, Listener, TransportConfig};
use capwire::typed::{sink, ItemsOf, Sink};
use capwire::{Code, Registry, Session, SessionConfig, Status};
use futures_util::StreamExt;
use tokio::sync::watch;

/// Stores files by name.
#[capwire::interface(name = "storage", version = "1.0")]
pub trait Storage {
    /// A sink for the chunks of file `name`; the file exists once the sink ends.
    async fn upload(&self, name: String) -> Result<Sink<Vec<u8>>, Status>;
    /// The size of a file, waiting for its upload to end.
    async fn size(&self, name: String) -> Result<u64, Status>;
    /// The file back, in chunks.
    #[capwire(stream)]
    async fn download(&self, name: String) -> Result<ItemsOf<Vec<u8>>, Status>;
}

#[derive(Clone)]
struct Disk {
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    changed: watch::Sender<u64>,
}

impl Storage for Disk {
    async fn upload(&self, name: String) -> Result<Sink<Vec<u8>>, Status> {
        let (sink, mut chunks) = sink::<Vec<u8>>(8);
        let disk = self.clone();
        tokio::spawn(async move {
            let mut file = Vec::new();
            while let Some(chunk) = chunks.next().await {
                match chunk {
                    Ok(bytes) => file.extend_from_slice(&bytes),
                    Err(e) => return eprintln!("upload of {name} failed: {e}"),
                }
            }
            disk.files.lock().unwrap().insert(name, file);
            disk.changed.send_modify(|n| *n += 1);
        });
        Ok(sink)
    }

    async fn size(&self, name: String) -> Result<u64, Status> {
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(f) = self.files.lock().unwrap().get(&name) {
                return Ok(f.len() as u64);
            }
            changed
                .changed()
                .await
                .map_err(|_| Status::new(Code::Unavailable, "storage closed"))?;
        }
    }

    async fn download(&self, name: String) -> Result<ItemsOf<Vec<u8>>, Status> {
        let file = self
            .files
            .lock()
            .unwrap()
            .get(&name)
            .cloned()
            .ok_or_else(|| Status::new(Code::NotFound, format!("no file {name}")))?;
        let chunks: Vec<Vec<u8>> = file.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
        Ok(futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let disk = Disk {
        files: Arc::default(),
        changed: watch::channel(0).0,
    };
    let registry = Registry::new();
    let _served = registry.serve_interface(StorageServer::new(disk))?;
    let listener =
        Listener::bind(&"tcp://127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    let addr = listener.local_addr().clone();
    // Every connection gets a session (in whichever dialect its peer speaks).
    tokio::spawn(capwire::dialect::serve_forever(
        listener,
        registry,
        Default::default(),
    ));

    let session = Session::new(
        transport::connect(&addr, &TransportConfig::default()).await?,
        Registry::new(),
        SessionConfig::default(),
    );
    let storage = StorageClient::bootstrap(&session).await?;
    let file: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();

    let upload = storage.upload("data.bin".into()).await?;
    let mut writer = upload.writer();
    for chunk in file.chunks(32 * 1024) {
        writer.send(&chunk.to_vec()).await?;
    }
    writer.end().await?;
    let size = storage.size("data.bin".into()).await?;
    println!(
        "uploaded {} bytes in {} chunks; the server has {size}",
        file.len(),
        file.len().div_ceil(32 * 1024)
    );

    let back: Vec<u8> = storage
        .download("data.bin".into())
        .collect_all()
        .await?
        .concat();
    println!(
        "downloaded {} bytes, identical: {}",
        back.len(),
        back == file
    );
    assert_eq!(size, file.len() as u64);
    assert_eq!(back, file);
    let missing = storage
        .download("nope".into())
        .collect_all()
        .await
        .expect_err("no such file");
    println!("download(\"nope\") -> {missing}");
    session.close().await;
    Ok(())
}
