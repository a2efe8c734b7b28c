//! Memory windows: `ibv_alloc_mw`, `ibv_dealloc_mw`. Binding and
//! invalidation are work requests (`engine::window`).

use super::*;
use flowverbs_verbs::window::{Kind, Window};

/// `nic_rkey`: semi mode over a NIC, the rkey of the window's twin on the
/// device, which the window takes if no window or MR of this router has
/// its index (EBUSY otherwise: the provider makes another twin).
pub(super) fn alloc_mw(
    engine: &mut Engine,
    session: SessionId,
    pd: u32,
    mw_type: u32,
    nic_rkey: Option<u32>,
) -> Answer {
    match (&engine.nic, nic_rkey) {
        (None, Some(_)) => return err(libc::EINVAL, "a NIC rkey, but this router has no NIC"),
        (Some(_), Some(k)) if !engine.tables.window_key_free(k) => {
            return err(
                libc::EBUSY,
                format!("NIC window rkey {k:#x}: its index is taken on this router"),
            )
        }
        _ => {}
    }
    let Some(kind) = Kind::from_verbs(mw_type) else {
        return err(libc::EINVAL, format!("no memory window type {mw_type}"));
    };
    let t = &mut engine.tables;
    if !owned(&t.pds, pd, session, |p| p.session) {
        return err(libc::EINVAL, "no such protection domain");
    }
    if count(&t.mws, session, |w| w.session) >= MAX_MW as usize {
        return err(libc::ENOMEM, "too many memory windows");
    }
    let mw = t.handle();
    let rkey = nic_rkey.unwrap_or_else(|| t.new_window_key());
    t.window_keys.insert(rkey >> 8, mw);
    t.mws.insert(
        mw,
        Mw {
            session,
            window: Window::new(kind, pd, rkey),
            slot: None,
        },
    );
    Answer::ok(Reply::Mw { mw, rkey })
}

/// Deallocating a bound window unbinds it (its rkey stops working).
pub(super) fn dealloc_mw(engine: &mut Engine, session: SessionId, mw: u32) -> Answer {
    if !owned(&engine.tables.mws, mw, session, |w| w.session) {
        return err(libc::EINVAL, "no such memory window");
    }
    remove_mw(engine, mw);
    Answer::ok(Reply::Done)
}

/// Removes window `mw` and its rkey (and its key-table slot).
pub(super) fn remove_mw(engine: &mut Engine, mw: u32) {
    let t = &mut engine.tables;
    if let Some(w) = t.mws.remove(&mw) {
        t.window_keys.remove(&(w.window.rkey >> 8));
        if let (Some(slot), Some(k)) = (w.slot, engine.key_table.as_mut()) {
            k.remove(slot);
        }
    }
}
