//! Resolves a compose/image `user` (`name`, `uid`, `name:group`, `uid:gid`)
//! against the container's `/etc/passwd` and `/etc/group`, as docker does:
//! a name must exist; a numeric uid need not (its gid is then 0); the primary
//! gid comes from passwd unless a group is given; supplementary groups are the
//! `/etc/group` entries listing the user name.

/// A resolved user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
    /// Home from passwd, if the user is listed.
    pub home: Option<String>,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = Passwd<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7).then_some(())?;
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4).then_some(())?;
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (empty = root). `passwd` / `group` are the files' contents
/// (empty if the image has none).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return resolve("0", passwd, group);
    }
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = if let Ok(uid) = user.parse::<u32>() {
        passwd_entries(passwd)
            .find(|p| p.uid == uid)
            .map(|p| (p.name.to_string(), p.uid, p.gid, p.home.to_string()))
            .or(Some((String::new(), uid, 0, String::new())))
    } else {
        passwd_entries(passwd)
            .find(|p| p.name == user)
            .map(|p| (p.name.to_string(), p.uid, p.gid, p.home.to_string()))
    };
    let (name, uid, mut gid, home) = entry
        .ok_or_else(|| format!("unable to find user {user}: no matching entries in passwd file"))?;
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, id, _)| id)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    let mut additional_gids: Vec<u32> = if name.is_empty() {
        Vec::new()
    } else {
        group_entries(group)
            .filter(|(_, _, m)| m.contains(&name.as_str()))
            .map(|(_, id, _)| id)
            .collect()
    };
    additional_gids.retain(|g| *g != gid);
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: (!home.is_empty()).then_some(home),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nwheel:x:10:root\n";

    #[test]
    fn users_resolve_like_docker() {
        type Want = Result<(u32, u32, Vec<u32>), ()>;
        let cases: &[(&str, Want)] = &[
            ("", Ok((0, 0, vec![10]))),
            ("app", Ok((1000, 1000, vec![2000]))),
            ("1000", Ok((1000, 1000, vec![2000]))),
            ("app:extra", Ok((1000, 2000, vec![]))),
            ("app:5", Ok((1000, 5, vec![2000]))),
            ("4242", Ok((4242, 0, vec![]))),
            ("4242:4243", Ok((4242, 4243, vec![]))),
            ("nobody", Err(())),
            ("app:nogroup", Err(())),
        ];
        for (spec, want) in cases {
            let got = resolve(spec, PASSWD, GROUP)
                .map(|u| (u.uid, u.gid, u.additional_gids))
                .map_err(|_| ());
            assert_eq!(&got, want, "user {spec:?}");
        }
    }
}
