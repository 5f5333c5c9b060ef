//! `schema/` stays true: the table definitions there have the key schema the code uses.

use dynamofs::store::Table;

fn keys_of(file: &str) -> Vec<(String, String, String)> {
    let text =
        std::fs::read_to_string(format!("{}/schema/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let types = json["AttributeDefinitions"].as_array().unwrap();
    json["KeySchema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let name = k["AttributeName"].as_str().unwrap().to_string();
            let ty = types
                .iter()
                .find(|t| t["AttributeName"] == k["AttributeName"])
                .unwrap()["AttributeType"]
                .as_str()
                .unwrap()
                .to_string();
            (name, k["KeyType"].as_str().unwrap().to_string(), ty)
        })
        .collect()
}

#[test]
fn schema_files_match_the_code() {
    for (file, table, range_type) in [
        ("meta-table.json", Table::Meta, "S"),
        ("blocks-table.json", Table::Blocks, "N"),
    ] {
        let (hash, range) = table.key_names();
        assert_eq!(
            keys_of(file),
            vec![
                (hash.to_string(), "HASH".to_string(), "S".to_string()),
                (
                    range.to_string(),
                    "RANGE".to_string(),
                    range_type.to_string()
                )
            ],
            "{file}"
        );
    }
    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/schema/iam-policy.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let actions: Vec<&str> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap())
        .map(|a| a.as_str().unwrap())
        .collect();
    for needed in [
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:DescribeTable",
        "dynamodb:CreateTable",
    ] {
        assert!(actions.contains(&needed), "policy lacks {needed}");
    }
}
