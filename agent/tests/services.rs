//! `cntnr services` lists what the store's registry holds (Consul's
//! catalog; `services/` records on etcd and dir). Instances are registered
//! here through cntnr-kv's registry API, as the agent does.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cntnr_kv::{ConnectOptions, Registration, StoreUrl};
use common::{text, Kind, TestStore};

fn services_lists_registered_instances(kind: Kind) {
    let s = TestStore::new(kind, "svc");
    let dir = s.tmp.path();
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  web:\n    image: busybox\n  api:\n    image: busybox\n    annotations:\n      cntnr.service.name: shop-public-api\n",
    )
    .unwrap();
    let out = s.cntnr(dir, &["deploy", "-f", "compose.yaml", "-p", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = ConnectOptions {
        registry_prefix: format!("{}/services", s.prefix),
        connect_timeout: Some(Duration::from_secs(10)),
        ..ConnectOptions::default()
    };
    let url = StoreUrl::parse(&s.url).unwrap();
    let (store, session) = rt.block_on(async {
        let store = cntnr_kv::connect(&url, &opts).await.unwrap();
        let session = store.create_session(Duration::from_secs(15)).await.unwrap();
        for (name, id, port) in [
            ("shop-web", format!("n1/shop-web-1-{}", s.prefix), 8080),
            (
                "shop-public-api",
                format!("n1/shop-api-1-{}", s.prefix),
                9090,
            ),
            ("unrelated", format!("n1/other-x-1-{}", s.prefix), 7000),
        ] {
            let reg = Registration {
                name: name.into(),
                id,
                address: "127.0.0.1".into(),
                port,
                tags: vec!["v1".into()],
                meta: BTreeMap::from([("project".into(), "shop".into())]),
                check_ttl: Duration::from_secs(60),
                deregister_after: Duration::from_secs(600),
            };
            store.register(&session, &reg).await.unwrap();
        }
        (store, session)
    });

    // Default: the services the deployed projects register (by their
    // registered names, annotations included), not unrelated ones.
    let v = s.cntnr_json(&["services"]);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["id"].as_str().unwrap().ends_with(&s.prefix))
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shop-public-api", "shop-web"], "{v}");
    let out = s.cntnr(dir, &["services", "shop-web"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains(&format!("n1/shop-web-1-{}", s.prefix)))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.starts_with("shop-web "), "{row}");
    assert!(
        row.contains("127.0.0.1:8080") && row.contains("passing") && row.ends_with("v1"),
        "{row}"
    );
    let v = s.cntnr_json(&["services", "unrelated"]);
    assert!(
        v.as_array().unwrap().iter().any(|i| i["port"] == 7000),
        "{v}"
    );

    rt.block_on(async {
        for (name, id) in [
            ("shop-web", format!("n1/shop-web-1-{}", s.prefix)),
            ("shop-public-api", format!("n1/shop-api-1-{}", s.prefix)),
            ("unrelated", format!("n1/other-x-1-{}", s.prefix)),
        ] {
            store.deregister(name, &id).await.unwrap();
        }
        session.close().await.unwrap();
    });
}

#[test]
fn services_lists_registered_instances_etcd() {
    services_lists_registered_instances(Kind::Etcd);
}

#[test]
fn services_lists_registered_instances_consul() {
    services_lists_registered_instances(Kind::Consul);
}

#[test]
fn services_lists_registered_instances_dir() {
    services_lists_registered_instances(Kind::Dir);
}
