//! `hog`: allocates 1 MiB after 1 MiB and keeps it all. The host must stop it at its memory limit.
use natsplug_sdk::{Message, handler};

handler!(handle);

fn handle(_msg: Message) -> natsplug_sdk::Result {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        kept.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&kept);
    }
}
