//! The update's rules one by one: resume after interrupted transfers, rejected chunks,
//! manifests and images that never become active, trial boots and rollback, and
//! hostile input that never panics.

mod common;

use common::*;
use embedded_storage::nor_flash::NorFlashErrorKind;
use glint_board::ed25519_dalek::SigningKey;
use glint_board::host::signed_manifest;
use glint_board::*;
use sha2::{Digest, Sha256};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn header(manifest: &[u8]) -> ManifestHeader {
    ManifestHeader::parse(manifest[..HEADER_LEN].try_into().unwrap()).unwrap()
}

fn chunk_hashes(image: &[u8]) -> Vec<[u8; 32]> {
    image
        .chunks(CHUNK as usize)
        .map(|c| Sha256::digest(c).into())
        .collect()
}

/// Boots and returns the booted model version and slot state.
fn boot(flash: Flash) -> (Flash, u32, SlotState) {
    let mut u = updater(flash).unwrap();
    let booted = u.boot().unwrap();
    u.model(&booted).unwrap().verify().unwrap();
    (u.release(), booted.manifest.model_version, booted.state)
}

#[test]
fn a_transfer_killed_at_random_offsets_resumes_from_the_last_verified_chunk() {
    let (image, manifest) = (tiny_image(2), manifest(2));
    let chunks = header(&manifest).chunk_count;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut kills_total = 0;
    for round in 0..20 {
        let mut flash = provisioned();
        let (mut acked, mut sent, mut kills) = (0u32, 0u32, 0);
        loop {
            // Power goes somewhere in the next ~12 operations (about 4 chunks).
            flash.cut_power(PowerCut {
                at_op: flash.ops() + rng.below(12),
                torn: rng.below(2) == 1,
            });
            let mut u = updater(flash).unwrap();
            let result = (|| {
                u.boot()?;
                let progress = u.begin(&manifest)?;
                // Never behind what the device acknowledged; at most the chunk in flight
                // ahead of it (its write may have finished before the cut).
                assert!(
                    progress.next_chunk == acked || progress.next_chunk == acked + 1,
                    "round {round}: resumed at {}, {acked} acknowledged",
                    progress.next_chunk
                );
                assert_eq!(
                    progress.resume_offset,
                    (progress.next_chunk * CHUNK).min(image.len() as u32)
                );
                acked = progress.next_chunk;
                for index in progress.next_chunk..progress.chunk_count {
                    sent += 1;
                    acked = u.write_chunk(index, chunk(&image, index))?.next_chunk;
                }
                u.finish()
            })();
            flash = u.release();
            match result {
                Ok(slot) => {
                    assert_eq!(slot, SlotId::B);
                    flash.power_on(); // disarms a cut not reached
                    break;
                }
                Err(e) => {
                    assert!(!flash.is_powered(), "round {round}: {e}");
                    flash.power_on();
                    kills += 1;
                }
            }
        }
        assert!(kills > 0, "round {round}: the transfer was never killed");
        // Resuming sent each chunk about once, not from the start after every kill.
        assert!(
            sent <= chunks + kills,
            "round {round}: {sent} chunks sent, {kills} kills"
        );
        kills_total += kills;
        let (_, version, state) = boot(flash);
        assert_eq!((version, state), (2, SlotState::Trial));
    }
    assert!(kills_total >= 40, "{kills_total} kills");
}

#[test]
fn a_corrupted_chunk_is_rejected_and_resent() {
    let (image, manifest) = (tiny_image(2), manifest(2));
    let mut u = updater(provisioned()).unwrap();
    u.boot().unwrap();
    let progress = u.begin(&manifest).unwrap();
    assert_eq!(progress.next_chunk, 0);
    for index in 0..progress.chunk_count {
        let good = chunk(&image, index);
        if index == 3 {
            let mut bad = good.to_vec();
            bad[100] ^= 0x10;
            assert_eq!(
                u.write_chunk(3, &bad),
                Err(UpdateError::ChunkHashMismatch { index: 3 })
            );
            assert_eq!(u.progress().unwrap().next_chunk, 3);
            assert_eq!(
                u.write_chunk(3, &good[1..]),
                Err(UpdateError::ChunkLength {
                    index: 3,
                    expected: CHUNK,
                    got: CHUNK as usize - 1
                })
            );
            assert_eq!(
                u.write_chunk(5, chunk(&image, 5)),
                Err(UpdateError::UnexpectedChunk {
                    expected: 3,
                    got: 5
                })
            );
            assert_eq!(
                u.finish(),
                Err(UpdateError::Incomplete {
                    next_chunk: 3,
                    chunk_count: progress.chunk_count
                })
            );
        }
        u.write_chunk(index, good).unwrap();
        // A resend of an acknowledged chunk is accepted and changes nothing.
        assert_eq!(u.write_chunk(index, good).unwrap().next_chunk, index + 1);
    }
    assert_eq!(u.finish(), Ok(SlotId::B));
    let (_, version, state) = boot(u.release());
    assert_eq!((version, state), (2, SlotState::Trial));
}

/// Runs a whole transfer of `image` under `manifest` and checks that it fails with
/// `error`, that flash operations happened only where expected, and that the device
/// still boots version 1 and never the rejected image.
fn never_active(manifest: &[u8], image: &[u8], error: UpdateError, touches_flash: bool) {
    let mut u = updater(provisioned()).unwrap();
    u.boot().unwrap();
    let before = u.state();
    let result = (|| {
        let progress = u.begin(manifest)?;
        for index in progress.next_chunk..progress.chunk_count {
            u.write_chunk(index, chunk(image, index))?;
        }
        u.finish()
    })();
    assert_eq!(result, Err(error));
    assert_eq!(u.state(), before, "no state change");
    let flash = u.release();
    let ops = flash.ops();
    assert_eq!(ops > provisioned().ops(), touches_flash, "flash operations");
    for _ in 0..5 {
        let mut u = updater(flash.clone()).unwrap();
        let booted = u.boot().unwrap();
        assert_eq!((booted.slot, booted.manifest.model_version), (SlotId::A, 1));
        assert_eq!(u.state().slot(SlotId::B), SlotState::Invalid);
    }
}

#[test]
fn a_manifest_with_a_bad_signature_is_refused_before_any_write() {
    let image = tiny_image(2);
    let good = manifest(2);
    let other_key = SigningKey::from_bytes(&[9; 32]);
    let foreign = spec(2).sign(&image, &other_key).unwrap();
    let signature = ManifestError::BadSignature;
    never_active(&foreign, &image, UpdateError::Manifest(signature), false);
    // A signed field changed: the model version.
    let mut bumped = good.clone();
    bumped[12] ^= 1;
    never_active(&bumped, &image, UpdateError::Manifest(signature), false);
    // The signature itself damaged.
    let mut damaged = good.clone();
    damaged[HEADER_LEN + 5] ^= 0x40;
    never_active(&damaged, &image, UpdateError::Manifest(signature), false);
    // The chunk table changed under a valid header.
    let mut table = good.clone();
    table[SIGNED_LEN + 40] ^= 1;
    never_active(
        &table,
        &image,
        UpdateError::Manifest(ManifestError::ChunkTableMismatch),
        false,
    );
    // Truncated.
    never_active(
        &good[..good.len() - 32],
        &image,
        UpdateError::Manifest(ManifestError::LengthMismatch {
            expected: good.len(),
            actual: good.len() - 32,
        }),
        false,
    );
}

#[test]
fn an_image_with_a_bad_hash_never_becomes_active() {
    let image = tiny_image(2);
    let good = header(&manifest(2));
    // Signed, but the whole-image hash is wrong: every chunk verifies, finish refuses.
    let mut wrong_whole = good;
    wrong_whole.image_sha256[0] ^= 1;
    let m = signed_manifest(wrong_whole, &chunk_hashes(&image), &signing_key());
    never_active(&m, &image, UpdateError::ImageHashMismatch, true);
    // Signed hashes of another image: the first chunk that differs is refused.
    let other = tiny_image(3);
    let differs = chunk_hashes(&other)
        .iter()
        .zip(chunk_hashes(&image))
        .position(|(a, b)| *a != b)
        .unwrap() as u32;
    let mut h = good;
    h.image_sha256 = Sha256::digest(&other).into();
    let m = signed_manifest(h, &chunk_hashes(&other), &signing_key());
    never_active(
        &m,
        &image,
        UpdateError::ChunkHashMismatch { index: differs },
        true,
    );
    // Signed and consistent, but not a .glint model.
    let garbage: Vec<u8> = (0..image.len()).map(|i| (i * 7 % 251) as u8).collect();
    let mut h = good;
    h.image_sha256 = Sha256::digest(&garbage).into();
    let m = signed_manifest(h, &chunk_hashes(&garbage), &signing_key());
    never_active(
        &m,
        &garbage,
        UpdateError::Model(FormatError::BadMagic),
        true,
    );
    // A valid model whose manifest names another format version.
    let mut h = good;
    h.format_version += 1;
    let m = signed_manifest(h, &chunk_hashes(&image), &signing_key());
    never_active(
        &m,
        &image,
        UpdateError::FormatVersion {
            manifest: h.format_version,
            image: h.format_version - 1,
        },
        true,
    );
}

#[test]
fn a_trial_image_damaged_in_flash_is_abandoned_at_boot() {
    let mut u = updater(provisioned()).unwrap();
    transfer(&mut u, &manifest(2), &tiny_image(2)).unwrap();
    let mut flash = u.release();
    let at = table().image_area(SlotId::B).offset as usize + 5000;
    flash.bytes_mut()[at] ^= 0x01;
    let mut u = updater(flash).unwrap();
    let booted = u.boot().unwrap();
    assert_eq!((booted.slot, booted.manifest.model_version), (SlotId::A, 1));
    assert_eq!(u.state().slot(SlotId::B), SlotState::Invalid);
}

#[test]
fn an_unconfirmed_trial_is_rolled_back_after_three_boots() {
    let mut u = updater(provisioned()).unwrap();
    transfer(&mut u, &manifest(2), &tiny_image(2)).unwrap();
    let mut flash = u.release();
    for boots in 1..=MAX_TRIAL_BOOTS {
        let mut u = updater(flash).unwrap();
        let booted = u.boot().unwrap();
        assert_eq!((booted.slot, booted.state), (SlotId::B, SlotState::Trial));
        assert_eq!(u.state().trial_boots, boots);
        assert_eq!(u.begin(&manifest(3)), Err(UpdateError::TrialPending));
        flash = u.release();
    }
    assert_eq!(MAX_TRIAL_BOOTS, 3);
    let mut u = updater(flash).unwrap();
    let booted = u.boot().unwrap();
    assert_eq!(
        (booted.slot, booted.state),
        (SlotId::A, SlotState::Confirmed)
    );
    assert_eq!(u.state().slots, [SlotState::Confirmed, SlotState::Invalid]);
    assert_eq!(u.confirm(), Err(UpdateError::NoTrial));
}

#[test]
fn finishing_again_answers_the_trial_slot_without_writing() {
    let (v2, image) = (manifest(2), tiny_image(2));
    let mut u = updater(provisioned()).unwrap();
    let slot = transfer(&mut u, &v2, &image).unwrap();
    // The answer to `finish` was lost: the host finishes again on the same link.
    let ops = u.flash().ops();
    assert_eq!(u.finish(), Ok(slot));
    // Or it reconnects after a reboot: `begin` with the same manifest is complete.
    let mut u = updater(u.release()).unwrap();
    let progress = u.begin(&v2).unwrap();
    assert_eq!(
        (progress.slot, progress.next_chunk, progress.resume_offset),
        (slot, progress.chunk_count, image.len() as u32)
    );
    assert_eq!(u.finish(), Ok(slot));
    assert_eq!(u.flash().ops(), ops, "nothing written again");
    assert_eq!(u.state().slot(slot), SlotState::Trial);
    // Another image is still refused while the trial is pending.
    assert_eq!(u.begin(&manifest(3)), Err(UpdateError::TrialPending));
    // A rejected or confirmed trial is not finished again.
    assert_eq!(u.begin(&v2).unwrap().slot, slot);
    u.reject().unwrap();
    assert_eq!(u.finish(), Err(UpdateError::NoTransfer));
    let mut u = updater(u.release()).unwrap();
    let slot = transfer(&mut u, &v2, &image).unwrap();
    assert_eq!(u.boot().unwrap().slot, slot);
    assert_eq!(u.begin(&v2).unwrap().slot, slot);
    u.confirm().unwrap();
    assert_eq!(u.finish(), Err(UpdateError::NoTransfer));
    assert_eq!(u.state().slot(slot), SlotState::Confirmed);
}

#[test]
fn a_rejected_trial_is_abandoned_at_once() {
    let mut u = updater(provisioned()).unwrap();
    transfer(&mut u, &manifest(2), &tiny_image(2)).unwrap();
    // Not booted yet: it cannot be confirmed.
    assert_eq!(u.confirm(), Err(UpdateError::TrialNotBooted));
    assert_eq!(u.boot().unwrap().slot, SlotId::B);
    u.reject().unwrap();
    let (_, version, state) = boot(u.release());
    assert_eq!((version, state), (1, SlotState::Confirmed));
}

#[test]
fn confirming_keeps_the_old_model_as_fallback_and_the_next_update_overwrites_it() {
    let flash = install(provisioned(), 2);
    let u = updater(flash).unwrap();
    assert_eq!(u.state().slots, [SlotState::Fallback, SlotState::Confirmed]);
    // A corrupt confirmed slot: the fallback boots.
    let mut flash = u.release();
    let header_at = table().manifest_area(SlotId::B).offset as usize + 20;
    flash.bytes_mut()[header_at] ^= 1;
    let (mut flash, version, state) = boot(flash);
    assert_eq!((version, state), (1, SlotState::Fallback));
    flash.bytes_mut()[header_at] ^= 1;
    // The next update goes to slot A, marked invalid before its first write.
    let mut u = updater(flash).unwrap();
    assert_eq!(u.boot().unwrap().slot, SlotId::B);
    let progress = u.begin(&manifest(3)).unwrap();
    assert_eq!(progress.slot, SlotId::A);
    assert_eq!(u.state().slots, [SlotState::Invalid, SlotState::Confirmed]);
}

#[test]
fn a_torn_state_write_leaves_the_other_copy() {
    let mut u = updater(provisioned()).unwrap();
    transfer(&mut u, &manifest(2), &tiny_image(2)).unwrap();
    let flash = u.release();
    let trial = updater(flash.clone()).unwrap().state();
    assert_eq!(
        (trial.slot(SlotId::B), trial.trial_boots),
        (SlotState::Trial, 0)
    );
    // A boot's first write is the trial boot count: erase the older copy, write it.
    let mut outcomes = Vec::new();
    for (op, torn) in [(0, false), (0, true), (1, false), (1, true)] {
        let mut flash = flash.clone();
        flash.cut_power(PowerCut {
            at_op: flash.ops() + op,
            torn,
        });
        let mut u = updater(flash).unwrap();
        assert_eq!(u.boot(), Err(UpdateError::Flash(NorFlashErrorKind::Other)));
        let mut flash = u.release();
        flash.power_on();
        let state = updater(flash).unwrap().state();
        assert_eq!(state.slots, trial.slots);
        assert!(
            state == trial || (state.trial_boots, state.seq) == (1, trial.seq + 1),
            "{state:?}"
        );
        outcomes.push(state.trial_boots);
    }
    assert!(
        outcomes.contains(&0),
        "a cut kept the older record: {outcomes:?}"
    );
}

#[test]
fn the_partition_table_must_fit_the_flash() {
    let key = signing_key().verifying_key();
    let cases = [
        (
            PartitionTable::sequential(ERASE as u32, MANIFEST_AREA, SLOT_LEN * 2),
            "past the end",
        ),
        (
            PartitionTable::sequential(ERASE as u32, 0, SLOT_LEN),
            "manifest area too small",
        ),
        (
            PartitionTable::sequential(ERASE as u32, SLOT_LEN, SLOT_LEN),
            "no room for an image",
        ),
        (
            PartitionTable::sequential(100, 200, 1000),
            "not whole erase sectors",
        ),
        (
            PartitionTable::sequential(ERASE as u32, 2048, u32::MAX - 1023),
            "past 4 GiB",
        ),
    ];
    for (table, why) in cases {
        match Updater::new(Flash::new(SECTORS), table, key) {
            Err(UpdateError::Layout(e)) => assert!(e.contains(why), "{e} vs {why}"),
            Err(e) => panic!("{why}: {e}"),
            Ok(_) => panic!("{why}: accepted"),
        }
    }
    let mut overlap = table();
    overlap.state_copies[1] = overlap.state_copies[0];
    assert!(matches!(
        Updater::new(Flash::new(SECTORS), overlap, key),
        Err(UpdateError::Layout("regions overlap"))
    ));
    // A flash whose sectors are smaller than 256 bytes is refused.
    let small = MemFlash::<4, 128>::new(1000);
    assert!(matches!(
        Updater::new(small, PartitionTable::sequential(128, 256, 4096), key),
        Err(UpdateError::Layout(_))
    ));
}

#[test]
fn hostile_input_never_panics() {
    let mut rng = Rng(42);
    let good = manifest(2);
    let image = tiny_image(2);
    let mut u = updater(provisioned()).unwrap();
    u.boot().unwrap();
    for round in 0..3000 {
        let mut bytes = if round % 3 == 0 {
            (0..rng.below(600)).map(|_| rng.next() as u8).collect()
        } else {
            good.clone()
        };
        for _ in 0..=rng.below(4) {
            if !bytes.is_empty() {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next() as u8;
            }
        }
        if round % 5 == 0 {
            bytes.truncate(rng.below(good.len() as u64 + 1) as usize);
        }
        let _ = u.begin(&bytes);
        let index = rng.below(40) as u32;
        let len = rng.below(3000) as usize;
        let data: Vec<u8> = if rng.below(2) == 0 {
            chunk(&image, index.min(17)).to_vec()
        } else {
            vec![rng.next() as u8; len]
        };
        let _ = u.write_chunk(index, &data);
        let _ = u.write_chunk(u32::MAX, &data);
        if round % 50 == 0 {
            let _ = u.finish();
        }
    }
    // Random flash contents: the store opens, and boot says what it found.
    for seed in 0..200 {
        let mut rng = Rng(seed + 1);
        let mut flash = provisioned();
        for _ in 0..=rng.below(64) {
            let at = rng.below(flash.bytes().len() as u64) as usize;
            flash.bytes_mut()[at] = rng.next() as u8;
        }
        if seed % 4 == 0 {
            // Whole garbage state copies and manifests.
            for b in flash.bytes_mut()[..4 * ERASE].iter_mut() {
                *b = rng.next() as u8;
            }
        }
        let mut u = updater(flash).unwrap();
        if let Ok(booted) = u.boot() {
            // Whatever boots parses as a model.
            u.model(&booted).unwrap();
        }
        let _ = u.confirm();
        let _ = u.reject();
        let _ = u.begin(&good);
    }
}

#[test]
fn the_host_signs_only_models_with_fitting_ids() {
    let key = glint_board::host::generate_signing_key().unwrap();
    assert_ne!(key.to_bytes(), signing_key().to_bytes());
    let image = tiny_image(2);
    let m = spec(2).sign(&image, &key).unwrap();
    let parsed = Manifest::parse(&m, &key.verifying_key()).unwrap();
    assert_eq!(parsed.header().model_id(), "tiny-llama");
    assert_eq!(
        parsed.header().chunk_count,
        (image.len() as u32).div_ceil(CHUNK)
    );
    assert_eq!(
        Manifest::parse(&m, &signing_key().verifying_key()).unwrap_err(),
        ManifestError::BadSignature
    );
    let refuse = |id, chunk_size, image: &[u8]| {
        host::ManifestSpec {
            model_id: id,
            model_version: 1,
            chunk_size,
        }
        .sign(image, &key)
        .unwrap_err()
    };
    use glint_board::host::SignError;
    assert_eq!(
        refuse("x".repeat(33).leak(), CHUNK, &image),
        SignError::ModelId
    );
    assert_eq!(refuse("a\0b", CHUNK, &image), SignError::ModelId);
    assert_eq!(refuse("ok", 0, &image), SignError::ChunkSize);
    assert_eq!(
        refuse("ok", CHUNK, b"not a model"),
        SignError::Model(FormatError::Truncated {
            expected: glint_format::HEADER_LEN as u64,
            actual: 11
        })
    );
}
