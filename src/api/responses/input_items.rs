//! `GET /v1/responses/{id}/input_items`: a stored response's own `input` (not that of the
//! responses before it in a `previous_response_id` chain) as OpenAI's item objects, each with
//! an `id`, paged as OpenAI's cursor lists are (`limit`, `order`, `after`).
//!
//! The items are normalised once, when the response is stored, so that the ids made for items
//! sent without one stay the same from one listing to the next (`after` pages by them).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::Input;
use crate::api::generation::item_id;
use crate::api::state::AppState;
use crate::error::ApiError;

/// The items listed at most, and by default.
const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 20;

/// The list's query. `limit` is taken as text so that a non-number is this API's 400 naming it
/// (not the extractor's plain-text one); `include` (extra output fields, none of which an input
/// item has here) is ignored, as any other key is, whether sent as `include=` or `include[]=`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    order: Option<String>,
    after: Option<String>,
}

pub async fn list(State(state): State<AppState>, Path(id): Path<String>, query: Result<Query<ListQuery>, QueryRejection>) -> Result<Json<Value>, ApiError> {
    // With every field text, only a repeated key (`limit=1&limit=2`) is refused here.
    let Query(query) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let items = state.responses.input_items(&id).ok_or_else(|| super::not_found(&id))?;
    page(&items, &query).map(Json)
}

/// `input` as the items a listing shows: a text as a user message, each message's string
/// content as one text part (`output_text` for the assistant's), an `id` on every item (the
/// one it was sent with, else a new one). Call and reasoning items are kept as given.
pub(super) fn normalise(input: &Input) -> Vec<Value> {
    match input {
        Input::Text(text) => vec![json!({"type": "message", "id": item_id("msg"), "role": "user", "status": "completed", "content": [{"type": "input_text", "text": text}]})],
        Input::Items(items) => items.iter().map(normalise_item).collect(),
    }
}

/// One item, already checked by `push_item` (its type is one it takes).
fn normalise_item(item: &Value) -> Value {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    let prefix = match kind {
        "function_call" => "fc",
        "function_call_output" => "fco",
        "reasoning" => "rs",
        _ => "msg",
    };
    let given = item.as_object().cloned().unwrap_or_default();
    // `type` and `id` first, as OpenAI's items have them, then the fields as given.
    let id = given.get("id").and_then(Value::as_str).map_or_else(|| item_id(prefix), str::to_string);
    let mut out = Map::from_iter([("type".to_string(), json!(kind)), ("id".to_string(), json!(id))]);
    out.extend(given.into_iter().filter(|(k, _)| k != "type" && k != "id"));
    if kind == "message" {
        let role = out.get("role").and_then(Value::as_str).unwrap_or("user").to_string();
        if let Some(Value::String(text)) = out.get("content") {
            let part = match role.as_str() {
                "assistant" => json!({"type": "output_text", "text": text, "annotations": []}),
                _ => json!({"type": "input_text", "text": text}),
            };
            out.insert("content".into(), json!([part]));
        }
        out.entry("status").or_insert_with(|| json!("completed"));
    }
    Value::Object(out)
}

/// One page of `items` (in input order) as OpenAI's list object.
fn page(items: &[Value], query: &ListQuery) -> Result<Value, ApiError> {
    let limit = limit(query.limit.as_deref())?;
    let ordered: Vec<&Value> = match query.order.as_deref().unwrap_or("desc") {
        "asc" => items.iter().collect(),
        // Newest first: the input's last item first.
        "desc" => items.iter().rev().collect(),
        other => return Err(ApiError::invalid("order", format!("`order` must be \"asc\" or \"desc\", got {other:?}"))),
    };
    let start = match query.after.as_deref() {
        None => 0,
        Some(after) => 1 + ordered.iter().position(|item| item["id"] == after).ok_or_else(|| ApiError::invalid("after", format!("`after` {after:?} is not the id of one of this response's input items")))?,
    };
    let rest = &ordered[start..];
    let data: Vec<&Value> = rest.iter().take(limit).copied().collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "first_id": data.first().map(|item| &item["id"]),
        "last_id": data.last().map(|item| &item["id"]),
        "has_more": rest.len() > limit,
    }))
}

/// `limit`, in [1, `MAX_LIMIT`]; `DEFAULT_LIMIT` when not given.
fn limit(given: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = given else { return Ok(DEFAULT_LIMIT) };
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid("limit", format!("`limit` must be an integer in [1, {MAX_LIMIT}], got {text:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(limit: Option<&str>, order: Option<&str>, after: Option<&str>) -> ListQuery {
        ListQuery { limit: limit.map(Into::into), order: order.map(Into::into), after: after.map(Into::into) }
    }

    fn ids(page: &Value) -> Vec<&str> {
        page["data"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap()).collect()
    }

    #[test]
    fn a_text_input_is_one_user_message() {
        let items = normalise(&Input::Text("hi".into()));
        assert_eq!(items.len(), 1);
        let id = items[0]["id"].as_str().unwrap();
        assert!(id.starts_with("msg_") && id.len() > 10, "{id}");
        assert_eq!(items[0], json!({"type": "message", "id": id, "role": "user", "status": "completed", "content": [{"type": "input_text", "text": "hi"}]}));
    }

    #[test]
    fn items_get_ids_and_string_content_becomes_parts() {
        let parts = json!([{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]);
        let input = Input::Items(vec![
            json!({"role": "user", "content": "question"}),
            json!({"type": "message", "id": "msg_given", "role": "assistant", "content": "answer"}),
            json!({"role": "user", "content": parts}),
            json!({"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "think"}]}),
            json!({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}),
            json!({"type": "function_call_output", "id": "fco_given", "call_id": "call_1", "output": "done"}),
        ]);
        let items = normalise(&input);
        let id = |i: usize| items[i]["id"].as_str().unwrap().to_string();
        assert!(id(0).starts_with("msg_"), "{}", items[0]);
        assert_eq!(items[0], json!({"type": "message", "id": id(0), "role": "user", "content": [{"type": "input_text", "text": "question"}], "status": "completed"}));
        assert_eq!(items[1], json!({"type": "message", "id": "msg_given", "role": "assistant", "content": [{"type": "output_text", "text": "answer", "annotations": []}], "status": "completed"}));
        assert_eq!(items[2]["content"], parts, "parts are kept as given");
        assert!(id(3).starts_with("rs_") && items[3]["content"][0]["text"] == "think", "{}", items[3]);
        assert!(id(4).starts_with("fc_") && items[4]["call_id"] == "call_1" && items[4]["arguments"] == "{}", "{}", items[4]);
        assert_eq!(items[5], json!({"type": "function_call_output", "id": "fco_given", "call_id": "call_1", "output": "done"}));
        assert_eq!(items.iter().map(|i| i["id"].as_str().unwrap()).collect::<std::collections::HashSet<_>>().len(), 6);
    }

    #[test]
    fn pages_run_newest_first_by_default_and_after_a_given_id() {
        let items: Vec<Value> = ["a", "b", "c", "d"].iter().map(|id| json!({"id": id})).collect();
        let all = page(&items, &ListQuery::default()).unwrap();
        assert_eq!(ids(&all), ["d", "c", "b", "a"]);
        assert_eq!((&all["object"], &all["first_id"], &all["last_id"], &all["has_more"]), (&json!("list"), &json!("d"), &json!("a"), &json!(false)));

        let first = page(&items, &query(Some("2"), Some("asc"), None)).unwrap();
        assert_eq!(ids(&first), ["a", "b"]);
        assert_eq!(first["has_more"], true);
        let second = page(&items, &query(Some("2"), Some("asc"), Some("b"))).unwrap();
        assert_eq!(ids(&second), ["c", "d"]);
        assert_eq!(second["has_more"], false, "nothing after the last");
        assert_eq!(ids(&page(&items, &query(None, None, Some("c"))).unwrap()), ["b", "a"]);

        let empty = page(&items, &query(None, Some("asc"), Some("d"))).unwrap();
        assert_eq!((&empty["data"], &empty["first_id"], &empty["last_id"], &empty["has_more"]), (&json!([]), &Value::Null, &Value::Null, &json!(false)));
        assert_eq!(page(&items, &query(Some("100"), None, None)).unwrap()["data"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn bad_parameters_are_named() {
        let items = vec![json!({"id": "a"})];
        for (q, param) in [
            (query(Some("0"), None, None), "limit"),
            (query(Some("101"), None, None), "limit"),
            (query(Some("ten"), None, None), "limit"),
            (query(Some("-1"), None, None), "limit"),
            (query(None, Some("newest"), None), "order"),
            (query(None, None, Some("msg_unknown")), "after"),
        ] {
            let e = page(&items, &q).unwrap_err();
            assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some(param)), "{}", e.message);
            assert!(e.message.contains(&format!("`{param}`")), "{}", e.message);
        }
    }
}
