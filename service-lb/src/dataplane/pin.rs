//! The bpffs folder: where pins live, that it really is bpffs, and that every existing map
//! pin has the layout this binary wants before the loader reuses it (aya reuses a pin
//! without comparing layouts).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};
use service_lb_common::{maps, Meta};
use tracing::{info, warn};

use super::{
    error::DataplaneError,
    layout::{self, MapLayout},
    options::{MapSizes, PinMismatch},
};

/// `statfs.f_type` of a bpf filesystem.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `<bpffs>/maps`: one pin per map, named as the map.
pub fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps")
}

/// `<bpffs>/links`: one pin per attachment, `<ifindex>-<ifname>-<hook>`.
pub fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

pub fn map_pin_path(bpffs: &Path, map: &str) -> PathBuf {
    maps_dir(bpffs).join(map)
}

/// Checks that `folder` (or, if it does not exist yet, its nearest existing parent) is on
/// a bpf filesystem.
pub fn ensure_bpffs(folder: &Path) -> Result<(), DataplaneError> {
    let mut probe = folder;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    let stat = nix::sys::statfs::statfs(probe)
        .map_err(|errno| DataplaneError::io("statfs", probe, io::Error::from(errno)))?;
    // `f_type` is a c_long on glibc and musl alike; widen for the comparison.
    #[allow(clippy::unnecessary_cast)]
    let found = stat.filesystem_type().0 as i64;
    if found != BPF_FS_MAGIC {
        return Err(DataplaneError::NotBpffs {
            path: probe.to_path_buf(),
            found,
        });
    }
    Ok(())
}

/// Creates `<bpffs>/maps` and `<bpffs>/links`.
pub fn create_dirs(bpffs: &Path) -> Result<(), DataplaneError> {
    for dir in [maps_dir(bpffs), links_dir(bpffs)] {
        fs::create_dir_all(&dir).map_err(|e| DataplaneError::io("creating", dir.clone(), e))?;
    }
    Ok(())
}

/// A pin removed because its layout did not match and the options asked to recreate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecreatedMap {
    pub map: &'static str,
    pub pinned: MapLayout,
    pub wanted: MapLayout,
}

/// Compares every existing map pin with the wanted layout. On a mismatch: refuse with a
/// typed error naming the map and both layouts, or (`PinMismatch::Recreate`) unpin it so
/// the loader creates a new, empty map, and report it.
pub fn check_pins(
    bpffs: &Path,
    sizes: &MapSizes,
    on_mismatch: PinMismatch,
) -> Result<Vec<RecreatedMap>, DataplaneError> {
    let mut recreated = Vec::new();
    for map in maps::ALL {
        let path = map_pin_path(bpffs, map);
        let Some(pinned) = pinned_layout(&path, map)? else {
            continue;
        };
        let Some(wanted) = layout::wanted(map, sizes) else {
            continue;
        };
        if pinned == wanted {
            continue;
        }
        match on_mismatch {
            PinMismatch::Refuse => {
                return Err(DataplaneError::PinLayoutMismatch {
                    map,
                    path,
                    pinned,
                    wanted,
                })
            }
            PinMismatch::Recreate => {
                warn!(
                    map,
                    %pinned,
                    %wanted,
                    "recreating a pinned map with a different layout: its content is lost \
                     (conntrack: established connections break)"
                );
                fs::remove_file(&path).map_err(|e| DataplaneError::io("unpinning", path, e))?;
                recreated.push(RecreatedMap {
                    map,
                    pinned,
                    wanted,
                });
            }
        }
    }
    check_pinned_meta(bpffs)?;
    Ok(recreated)
}

/// The layout of the map pinned at `path`, `None` when nothing is pinned there.
fn pinned_layout(path: &Path, map: &'static str) -> Result<Option<MapLayout>, DataplaneError> {
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(path).map_err(|e| DataplaneError::map(map, e))?;
    let info = data.info().map_err(|e| DataplaneError::map(map, e))?;
    MapLayout::of(&info)
        .map(Some)
        .map_err(|e| DataplaneError::map(map, e))
}

/// Refuses pins written by a daemon with another layout version (0 = never written).
fn check_pinned_meta(bpffs: &Path) -> Result<(), DataplaneError> {
    let path = map_pin_path(bpffs, maps::META);
    if !path.exists() {
        return Ok(());
    }
    let found = read_layout_version(&path)?;
    if found != 0 && found != maps::LAYOUT_VERSION {
        return Err(DataplaneError::LayoutVersionMismatch {
            path,
            found,
            wanted: maps::LAYOUT_VERSION,
        });
    }
    Ok(())
}

fn open_meta(path: &Path) -> Result<Array<MapData, Meta>, DataplaneError> {
    let data = MapData::from_pin(path).map_err(|e| DataplaneError::map(maps::META, e))?;
    Array::try_from(Map::Array(data)).map_err(|e| DataplaneError::map(maps::META, e))
}

/// `Meta.layout_version` of the pinned meta map at `path`.
pub fn read_layout_version(path: &Path) -> Result<u32, DataplaneError> {
    let meta = open_meta(path)?;
    let value = meta
        .get(&0, 0)
        .map_err(|e| DataplaneError::map(maps::META, e))?;
    Ok(value.layout_version)
}

/// Writes `maps::LAYOUT_VERSION` into the pinned meta map (after the check above, the
/// stored version is either 0 or already this one).
pub fn write_layout_version(bpffs: &Path) -> Result<(), DataplaneError> {
    let path = map_pin_path(bpffs, maps::META);
    let mut meta = open_meta(&path)?;
    let mut value = meta
        .get(&0, 0)
        .map_err(|e| DataplaneError::map(maps::META, e))?;
    if value.layout_version == maps::LAYOUT_VERSION {
        return Ok(());
    }
    value.layout_version = maps::LAYOUT_VERSION;
    meta.set(0, value, 0)
        .map_err(|e| DataplaneError::map(maps::META, e))?;
    info!(
        version = maps::LAYOUT_VERSION,
        "wrote the layout version into the meta map"
    );
    Ok(())
}

/// Removes every map pin (a map disappears once no program or fd holds it).
pub fn unpin_maps(bpffs: &Path) -> Result<usize, DataplaneError> {
    remove_files_in(&maps_dir(bpffs))
}

/// Removes every regular entry of `dir` (pins are files); a missing folder is empty.
pub(crate) fn remove_files_in(dir: &Path) -> Result<usize, DataplaneError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(DataplaneError::io("reading", dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| DataplaneError::io("reading", dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            continue;
        }
        fs::remove_file(&path).map_err(|e| DataplaneError::io("unpinning", path, e))?;
        removed += 1;
    }
    Ok(removed)
}
