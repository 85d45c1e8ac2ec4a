//! `--devices 0,1,...`: one model per device at a time.
//!
//! One worker thread per device takes the next model of the list (in list order) and runs
//! all of that model's stages on its device, then takes the next. Why whole models and not
//! `run --shard` across the devices: a shard loads the whole model too (the shards are
//! data-parallel), so N devices on N models answer as fast as N shards of one model, with
//! no merge step, one answers file per model from the start, and a failing model (out of
//! memory, a corrupt export) stopping only its own device's work. The weights stages are
//! serialised by the caller (one download or export at a time).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs `work(index, device)` for every index below `count`, one at a time per device,
/// each index once; results in index order.
pub fn each_on_devices<T: Send>(
    count: usize,
    devices: &[i32],
    work: impl Fn(usize, i32) -> T + Sync,
) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..count).map(|_| None).collect());
    std::thread::scope(|scope| {
        for &device in devices {
            let (next, results, work) = (&next, &results, &work);
            scope.spawn(move || loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= count {
                    break;
                }
                let result = work(index, device);
                results.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every index is taken by one worker"))
        .collect()
}

/// `--devices`: distinct device ids, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices(pub Vec<i32>);

pub fn parse_devices(text: &str) -> Result<Devices, String> {
    let mut devices = Vec::new();
    for part in text.split(',') {
        let id: i32 = part
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| format!("--devices: `{part}` is not a device number (0, 1, ...)"))?;
        if devices.contains(&id) {
            return Err(format!("--devices: {id} is given twice"));
        }
        devices.push(id);
    }
    Ok(Devices(devices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_model_once_one_per_device_at_a_time() {
        let busy: Mutex<Vec<i32>> = Mutex::new(Vec::new());
        let most = AtomicUsize::new(0);
        // The first three models start together (each waits for the others), so the
        // three devices must be working at once.
        let start = std::sync::Barrier::new(3);
        let results = each_on_devices(7, &[0, 1, 3], |index, device| {
            if index < 3 {
                start.wait();
            }
            {
                let mut busy = busy.lock().unwrap();
                assert!(!busy.contains(&device), "device {device} given two models");
                busy.push(device);
                most.fetch_max(busy.len(), Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(30));
            busy.lock().unwrap().retain(|d| *d != device);
            (index, device)
        });
        assert_eq!(
            results.iter().map(|r| r.0).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
        let used: std::collections::BTreeSet<i32> = results.iter().map(|r| r.1).collect();
        assert_eq!(used.into_iter().collect::<Vec<_>>(), [0, 1, 3]);
        assert_eq!(most.load(Ordering::SeqCst), 3, "the devices work at once");
        // One device: in list order.
        let order = Mutex::new(Vec::new());
        each_on_devices(4, &[0], |i, _| order.lock().unwrap().push(i));
        assert_eq!(order.into_inner().unwrap(), [0, 1, 2, 3]);
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_devices("0,1, 2"), Ok(Devices(vec![0, 1, 2])));
        assert!(parse_devices("0,0").unwrap_err().contains("twice"));
        assert!(parse_devices("a").is_err() && parse_devices("-1").is_err());
        assert!(parse_devices("").is_err());
    }
}
