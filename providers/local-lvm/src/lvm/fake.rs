//! A stateful fake of the `lvm` command line for unit tests.
//!
//! It understands exactly the argument shapes [`super::client::Lvm`] builds,
//! keeps one volume group in memory, answers reports in the JSON shape
//! lvm2 2.03 prints (see `tests/fixtures`), fails with lvm's real messages,
//! and records every command line so tests can assert on them. With a
//! device root it also creates and removes sparse files standing in for
//! the device nodes of active LVs, so the real device code runs on them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::json;

use super::command::LvmRunner;
use super::error::LvmError;

#[derive(Debug, Clone)]
pub struct FakeLv {
    pub size: u64,
    pub attr: [char; 10],
    pub tags: Vec<String>,
    pub pool: String,
    pub origin: String,
    pub segtype: String,
    pub data_percent: String,
    pub health: String,
    pub time: u32,
}

#[derive(Debug)]
struct State {
    vg: String,
    vg_size: u64,
    extent: u64,
    lvs: BTreeMap<String, FakeLv>,
    calls: Vec<Vec<String>>,
    fail_next: Vec<(String, String)>,
    clock: u32,
    device_root: Option<PathBuf>,
}

/// The fake; clones share state.
#[derive(Debug, Clone)]
pub struct FakeLvm {
    state: Arc<Mutex<State>>,
}

fn fail(sub: &str, stderr: &str) -> LvmError {
    LvmError::classify(sub, "exit status: 5", Some(5), stderr.as_bytes())
}

fn parse_bytes(sub: &str, arg: &str) -> Result<u64, LvmError> {
    let n: u64 = arg
        .strip_suffix('b')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            LvmError::classify(
                sub,
                "exit status: 3",
                Some(3),
                b"Invalid argument for --size",
            )
        })?;
    if n % 512 != 0 {
        return Err(LvmError::classify(
            sub,
            "exit status: 3",
            Some(3),
            b"Size is not a multiple of 512.",
        ));
    }
    Ok(n)
}

impl FakeLvm {
    /// A VG of `vg_size` bytes with 4 MiB extents.
    pub fn new(vg: &str, vg_size: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                vg: vg.to_owned(),
                vg_size,
                extent: 4 << 20,
                lvs: BTreeMap::new(),
                calls: Vec::new(),
                fail_next: Vec::new(),
                clock: 0,
                device_root: None,
            })),
        }
    }

    /// Device files for active LVs go under `root/<vg>/`.
    pub fn with_device_root(self, root: PathBuf) -> Self {
        self.lock().device_root = Some(root);
        self
    }

    /// Adds a thin pool of `bytes` with `data_percent` used.
    pub fn add_thin_pool(&self, name: &str, bytes: u64, data_percent: &str) {
        let mut st = self.lock();
        st.clock += 1;
        let time = st.clock;
        st.lvs.insert(
            name.to_owned(),
            FakeLv {
                size: bytes,
                attr: attr("twi-aotz--"),
                tags: vec![],
                pool: String::new(),
                origin: String::new(),
                segtype: "thin-pool".into(),
                data_percent: data_percent.into(),
                health: String::new(),
                time,
            },
        );
    }

    /// Adds an LV that omnidisk did not make.
    pub fn add_foreign(&self, name: &str, bytes: u64) {
        let mut st = self.lock();
        st.clock += 1;
        let time = st.clock;
        st.lvs.insert(name.to_owned(), plain(bytes, vec![], time));
    }

    /// The next `sub` command fails with `stderr` (exit 5).
    pub fn fail_next(&self, sub: &str, stderr: &str) {
        self.lock()
            .fail_next
            .push((sub.to_owned(), stderr.to_owned()));
    }

    /// Every command line so far (`[subcommand, args...]`).
    pub fn calls(&self) -> Vec<Vec<String>> {
        self.lock().calls.clone()
    }

    /// Command lines of one subcommand.
    pub fn calls_of(&self, sub: &str) -> Vec<Vec<String>> {
        self.calls().into_iter().filter(|c| c[0] == sub).collect()
    }

    /// A copy of one LV's state.
    pub fn lv(&self, name: &str) -> Option<FakeLv> {
        self.lock().lvs.get(name).cloned()
    }

    /// Changes one LV's state.
    pub fn edit(&self, name: &str, f: impl FnOnce(&mut FakeLv)) {
        if let Some(lv) = self.lock().lvs.get_mut(name) {
            f(lv);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn attr(text: &str) -> [char; 10] {
    let mut out = ['-'; 10];
    for (i, c) in text.chars().take(10).enumerate() {
        out[i] = c;
    }
    out
}

fn plain(size: u64, tags: Vec<String>, time: u32) -> FakeLv {
    FakeLv {
        size,
        attr: attr("-wi-a-----"),
        tags,
        pool: String::new(),
        origin: String::new(),
        segtype: "linear".into(),
        data_percent: String::new(),
        health: String::new(),
        time,
    }
}

impl State {
    fn free(&self) -> u64 {
        let used: u64 = self
            .lvs
            .values()
            .filter(|lv| lv.segtype != "thin")
            .map(|lv| lv.size)
            .sum();
        self.vg_size / self.extent * self.extent - used
    }

    fn round(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.extent) * self.extent
    }

    fn device(&self, lv: &str) -> Option<PathBuf> {
        self.device_root
            .as_ref()
            .map(|root| root.join(&self.vg).join(lv))
    }

    fn sync_device(&self, name: &str) {
        let Some(path) = self.device(name) else {
            return;
        };
        match self.lvs.get(name) {
            Some(lv) if lv.attr[4] == 'a' => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).expect("fake device dir");
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .expect("fake device file");
                file.set_len(lv.size).expect("fake device size");
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn split_target<'a>(
        &self,
        sub: &str,
        target: &'a str,
    ) -> Result<(&'a str, Option<&'a str>), LvmError> {
        let (vg, lv) = match target.split_once('/') {
            Some((vg, lv)) => (vg, Some(lv)),
            None => (target, None),
        };
        if vg != self.vg {
            return Err(fail(
                sub,
                &format!("  Volume group \"{vg}\" not found\n  Cannot process volume group {vg}\n"),
            ));
        }
        Ok((vg, lv))
    }

    fn existing<'a>(&self, sub: &str, target: &'a str) -> Result<&'a str, LvmError> {
        let (_, lv) = self.split_target(sub, target)?;
        let lv = lv.unwrap_or_default();
        if !self.lvs.contains_key(lv) {
            return Err(fail(
                sub,
                &format!("  Failed to find logical volume \"{target}\"\n"),
            ));
        }
        Ok(lv)
    }

    fn report_lvs(&self) -> Vec<u8> {
        let rows: Vec<serde_json::Value> = self
            .lvs
            .iter()
            .map(|(name, lv)| {
                let origin_size = self
                    .lvs
                    .get(&lv.origin)
                    .map(|o| o.size.to_string())
                    .unwrap_or_default();
                json!({
                    "lv_uuid": format!("uuid-{name}"),
                    "lv_name": name,
                    "vg_name": self.vg,
                    "lv_size": lv.size.to_string(),
                    "lv_attr": lv.attr.iter().collect::<String>(),
                    "lv_tags": lv.tags.join(","),
                    "pool_lv": lv.pool,
                    "origin": lv.origin,
                    "origin_size": origin_size,
                    "lv_time": format!("2026-11-22 08:{:02}:{:02} +0000", lv.time / 60 % 60, lv.time % 60),
                    "lv_health_status": lv.health,
                    "segtype": lv.segtype,
                    "data_percent": lv.data_percent,
                    "metadata_percent": "",
                })
            })
            .collect();
        serde_json::to_vec(&json!({"report": [{"lv": rows}]})).expect("json")
    }

    fn report_vgs(&self) -> Vec<u8> {
        let size = self.vg_size / self.extent * self.extent;
        serde_json::to_vec(&json!({"report": [{"vg": [{
            "vg_uuid": "vg-uuid",
            "vg_name": self.vg,
            "vg_size": size.to_string(),
            "vg_free": self.free().to_string(),
            "vg_extent_size": self.extent.to_string(),
            "vg_tags": "",
        }]}]}))
        .expect("json")
    }

    fn lvcreate(&mut self, args: &[String]) -> Result<(), LvmError> {
        let sub = "lvcreate";
        let mut name = None;
        let mut size = None;
        let mut virtual_size = None;
        let mut pool = None;
        let mut snapshot = false;
        let mut skip = true;
        let mut tags = Vec::new();
        let mut target = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--name" => name = it.next().cloned(),
                "--size" => size = Some(parse_bytes(sub, it.next().map_or("", |s| s))?),
                "--virtualsize" => {
                    virtual_size = Some(parse_bytes(sub, it.next().map_or("", |s| s))?)
                }
                "--thinpool" => pool = it.next().cloned(),
                "--snapshot" => snapshot = true,
                "--setactivationskip" => skip = it.next().is_some_and(|v| v == "y"),
                "--addtag" => tags.extend(it.next().cloned()),
                "--type" | "--wipesignatures" | "--zero" => {
                    it.next();
                }
                "--yes" => {}
                other if other.starts_with('-') => panic!("fake lvcreate: unexpected {other}"),
                other => target = Some(other.to_owned()),
            }
        }
        let name = name.expect("fake lvcreate: --name");
        let target = target.expect("fake lvcreate: target");
        tags.sort();
        let (_, origin) = self.split_target(sub, &target)?;
        if self.lvs.contains_key(&name) {
            return Err(fail(
                sub,
                &format!(
                    "  Logical Volume \"{name}\" already exists in volume group \"{}\"\n",
                    self.vg
                ),
            ));
        }
        self.clock += 1;
        let time = self.clock;
        let lv = if snapshot {
            let origin = origin.expect("fake lvcreate: snapshot origin").to_owned();
            let Some(o) = self.lvs.get(&origin).cloned() else {
                return Err(fail(
                    sub,
                    &format!("  Failed to find logical volume \"{target}\"\n"),
                ));
            };
            match size {
                None if o.segtype != "thin" => {
                    return Err(fail(
                        sub,
                        "  Please specify either size or extents with snapshots.\n",
                    ));
                }
                None => FakeLv {
                    size: o.size,
                    attr: attr(if skip { "Vwi---tz-k" } else { "Vwi-a-tz--" }),
                    tags,
                    pool: o.pool.clone(),
                    origin,
                    segtype: "thin".into(),
                    data_percent: o.data_percent.clone(),
                    health: String::new(),
                    time,
                },
                Some(bytes) => {
                    let bytes = self.round(bytes);
                    if bytes > self.free() {
                        return Err(fail(
                            sub,
                            "  Volume group \"x\" has insufficient free space (0 extents): 1 required.\n",
                        ));
                    }
                    if let Some(o) = self.lvs.get_mut(&origin) {
                        o.attr[0] = 'o';
                    }
                    FakeLv {
                        size: bytes,
                        attr: attr("swi-a-s---"),
                        tags,
                        pool: String::new(),
                        origin,
                        segtype: "linear".into(),
                        data_percent: "0.00".into(),
                        health: String::new(),
                        time,
                    }
                }
            }
        } else if let Some(bytes) = virtual_size {
            let pool = pool.expect("fake lvcreate: --thinpool");
            if self.lvs.get(&pool).is_none_or(|p| p.segtype != "thin-pool") {
                return Err(fail(
                    sub,
                    &format!("  Pool {pool} not found in Volume group {}.\n", self.vg),
                ));
            }
            FakeLv {
                size: self.round(bytes),
                attr: attr("Vwi-a-tz--"),
                tags,
                pool,
                origin: String::new(),
                segtype: "thin".into(),
                data_percent: "0.00".into(),
                health: String::new(),
                time,
            }
        } else {
            let bytes = self.round(size.expect("fake lvcreate: --size"));
            if bytes > self.free() {
                return Err(fail(
                    sub,
                    &format!(
                        "  Volume group \"{}\" has insufficient free space ({} extents): {} required.\n",
                        self.vg,
                        self.free() / self.extent,
                        bytes / self.extent
                    ),
                ));
            }
            plain(bytes, tags, time)
        };
        self.lvs.insert(name.clone(), lv);
        self.sync_device(&name);
        Ok(())
    }

    fn lvextend(&mut self, args: &[String]) -> Result<(), LvmError> {
        let sub = "lvextend";
        assert_eq!(args[0], "--size");
        let bytes = self.round(parse_bytes(sub, &args[1])?);
        let name = self.existing(sub, &args[2])?.to_owned();
        let free = self.free();
        let lv = self.lvs.get_mut(&name).expect("checked");
        if bytes <= lv.size {
            return Err(fail(
                sub,
                "  New size given (1 extents) not larger than existing size (3 extents)\n",
            ));
        }
        if lv.segtype != "thin" && bytes - lv.size > free {
            return Err(fail(
                sub,
                "  Volume group \"x\" has insufficient free space (0 extents): 1 required.\n",
            ));
        }
        lv.size = bytes;
        self.sync_device(&name);
        Ok(())
    }

    fn lvremove(&mut self, args: &[String]) -> Result<(), LvmError> {
        let sub = "lvremove";
        assert_eq!(args[0], "--yes");
        let name = self.existing(sub, &args[1])?.to_owned();
        if let Some(lv) = self.lvs.get(&name) {
            if lv.attr[5] == 'o' {
                return Err(fail(
                    sub,
                    &format!("  Logical volume {}/{name} in use.\n", self.vg),
                ));
            }
        }
        // With --yes lvm also removes the classic snapshots of an origin.
        let doomed: Vec<String> = self
            .lvs
            .iter()
            .filter(|(n, lv)| **n == name || (lv.origin == name && lv.attr[0] == 's'))
            .map(|(n, _)| n.clone())
            .collect();
        let origin = self
            .lvs
            .get(&name)
            .map(|lv| lv.origin.clone())
            .unwrap_or_default();
        for n in &doomed {
            self.lvs.remove(n);
            self.sync_device(n);
        }
        let still_origin = self
            .lvs
            .values()
            .any(|lv| lv.origin == origin && lv.attr[0] == 's');
        if let Some(o) = self.lvs.get_mut(&origin) {
            if o.attr[0] == 'o' && !still_origin {
                o.attr[0] = '-';
            }
        }
        Ok(())
    }

    fn lvchange(&mut self, args: &[String]) -> Result<(), LvmError> {
        let sub = "lvchange";
        let target = args.last().expect("fake lvchange: target");
        let name = self.existing(sub, target)?.to_owned();
        let mut it = args[..args.len() - 1].iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--activate" => {
                    let on = it.next().is_some_and(|v| v == "y");
                    let lv = self.lvs.get_mut(&name).expect("checked");
                    lv.attr[4] = if on { 'a' } else { '-' };
                }
                "--ignoreactivationskip" | "--yes" => {}
                "--addtag" => {
                    let tag = it.next().cloned().unwrap_or_default();
                    let lv = self.lvs.get_mut(&name).expect("checked");
                    if !lv.tags.contains(&tag) {
                        lv.tags.push(tag);
                        lv.tags.sort();
                    }
                }
                "--deltag" => {
                    let tag = it.next().cloned().unwrap_or_default();
                    let lv = self.lvs.get_mut(&name).expect("checked");
                    lv.tags.retain(|t| *t != tag);
                }
                other => panic!("fake lvchange: unexpected {other}"),
            }
        }
        self.sync_device(&name);
        Ok(())
    }
}

#[async_trait]
impl LvmRunner for FakeLvm {
    async fn run(&self, subcommand: &str, args: &[String]) -> Result<Vec<u8>, LvmError> {
        let mut st = self.lock();
        let mut line = vec![subcommand.to_owned()];
        line.extend(args.iter().cloned());
        st.calls.push(line);
        if let Some(pos) = st.fail_next.iter().position(|(s, _)| s == subcommand) {
            let (_, stderr) = st.fail_next.remove(pos);
            return Err(fail(subcommand, &stderr));
        }
        match subcommand {
            "lvs" => {
                let target = args.last().cloned().unwrap_or_default();
                st.split_target("lvs", &target)?;
                Ok(st.report_lvs())
            }
            "vgs" => {
                let target = args.last().cloned().unwrap_or_default();
                st.split_target("vgs", &target)?;
                Ok(st.report_vgs())
            }
            "lvcreate" => st.lvcreate(args).map(|_| Vec::new()),
            "lvextend" => st.lvextend(args).map(|_| Vec::new()),
            "lvremove" => st.lvremove(args).map(|_| Vec::new()),
            "lvchange" => st.lvchange(args).map(|_| Vec::new()),
            other => panic!("fake lvm: unexpected subcommand {other}"),
        }
    }
}
