//! Power cuts at every flash operation of a whole update — transfer, verification,
//! state updates, trial boot, confirmation or rollback — and again at every operation
//! of the recovery that follows: after each, the device boots a whole valid model, the
//! old or the new, never neither, and the update then completes.

mod common;

use common::*;
use glint_board::*;

/// What the host and the assistant want done.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    /// Install version 2; its first answer succeeds, so it is confirmed.
    Confirm,
    /// Install version 2; it never answers, so after three boots version 1 is back.
    Rollback,
}

/// What the host remembers across the device's power cuts.
#[derive(Clone, Copy, Debug, Default)]
struct Host {
    saw_new_model: bool,
}

struct Fixture {
    images: [Vec<u8>; 2],
    manifest: Vec<u8>,
}

/// One power-on: boot (checking the model), then do the plan's next step. `Ok(true)`
/// when the plan is complete.
fn power_on_once(
    u: &mut Updater<Flash>,
    plan: Plan,
    host: &mut Host,
    fx: &Fixture,
) -> Result<bool, UpdateError> {
    let booted = u.boot()?;
    let version = assert_valid_model(u, &booted, &fx.images);
    // Every slot the state record calls bootable holds a whole, signed, valid image:
    // no slot is ever written while the record could boot it.
    for slot in SlotId::BOTH {
        if u.state().slot(slot) != SlotState::Invalid {
            let checked = u.verify_slot(slot);
            assert!(checked.is_ok(), "{slot:?} {:?}: {checked:?}", u.state());
        }
    }
    match (plan, version) {
        (Plan::Confirm, 2) => {
            if booted.state == SlotState::Trial {
                // The trial model loaded (checked above) and answered.
                u.confirm()?;
            }
            Ok(true)
        }
        (Plan::Rollback, 2) => {
            assert_eq!(booted.state, SlotState::Trial, "never confirmed");
            host.saw_new_model = true;
            Ok(false)
        }
        (Plan::Rollback, _) if host.saw_new_model => Ok(true),
        _ => {
            transfer(u, &fx.manifest, &fx.images[1])?;
            Ok(false)
        }
    }
}

/// Powers the device on again and again until the plan completes or the power is cut.
/// Returns the flash and whether the plan completed.
fn run(mut flash: Flash, plan: Plan, host: &mut Host, fx: &Fixture) -> (Flash, bool) {
    for _ in 0..8 {
        let mut u = match updater(flash) {
            Ok(u) => u,
            Err(e) => panic!("opening the store failed: {e}"),
        };
        let step = power_on_once(&mut u, plan, host, fx);
        flash = u.release();
        match step {
            Ok(true) => return (flash, true),
            Ok(false) => {}
            Err(e) => {
                assert!(!flash.is_powered(), "failed with power on: {e}");
                return (flash, false);
            }
        }
    }
    panic!("{plan:?} did not complete in 8 power-ons");
}

/// Runs the plan to completion on a powered flash and checks the end state.
fn complete(flash: Flash, plan: Plan, host: &mut Host, fx: &Fixture) -> Flash {
    let (flash, done) = run(flash, plan, host, fx);
    assert!(done, "{plan:?} completes without a cut");
    let mut u = updater(flash).unwrap();
    let booted = u.boot().unwrap();
    let version = assert_valid_model(&u, &booted, &fx.images);
    assert_eq!(booted.state, SlotState::Confirmed);
    assert_eq!(version, if plan == Plan::Confirm { 2 } else { 1 });
    u.release()
}

/// Cuts power at operation `at_op`; the run must reach it.
fn cut_at(
    mut flash: Flash,
    at_op: u64,
    torn: bool,
    plan: Plan,
    host: &mut Host,
    fx: &Fixture,
) -> Flash {
    flash.cut_power(PowerCut { at_op, torn });
    let (mut flash, done) = run(flash, plan, host, fx);
    assert!(!done, "{plan:?} completed before operation {at_op}");
    flash.power_on();
    flash
}

#[test]
fn power_cut_at_every_operation_and_again_during_recovery() {
    let fx = Fixture {
        images: [tiny_image(1), tiny_image(2)],
        manifest: manifest(2),
    };
    let mut single = 0u64;
    let mut double = 0u64;
    for (start, from, plan) in [
        (provisioned(), "slot B empty", Plan::Confirm),
        (provisioned(), "slot B empty", Plan::Rollback),
        (with_fallback(), "slot A a fallback", Plan::Confirm),
        (with_fallback(), "slot A a fallback", Plan::Rollback),
    ] {
        let clean = complete(start.clone(), plan, &mut Host::default(), &fx);
        let ops = clean.ops() - start.ops();
        assert!(
            ops > 40,
            "{plan:?}: {ops} operations, expected a whole update"
        );
        println!("{plan:?} from {from}: {ops} write and erase operations");
        for first in 0..ops {
            for torn in [false, true] {
                let mut host = Host::default();
                let cut = cut_at(
                    start.clone(),
                    start.ops() + first,
                    torn,
                    plan,
                    &mut host,
                    &fx,
                );
                single += 1;
                // The recovery without a second cut, and how many operations it takes.
                let recovered = complete(cut.clone(), plan, &mut host.clone(), &fx);
                let recovery_ops = recovered.ops() - cut.ops();
                for second in 0..recovery_ops {
                    let mut host = host;
                    let twice =
                        cut_at(cut.clone(), cut.ops() + second, !torn, plan, &mut host, &fx);
                    complete(twice, plan, &mut host, &fx);
                    double += 1;
                }
            }
        }
    }
    println!(
        "power-cut points tried: {} ({single} single cuts, {double} second cuts during recovery)",
        single + double
    );
    assert!(
        single > 400 && double > 15000,
        "{single} single, {double} double"
    );
}
