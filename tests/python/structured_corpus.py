"""The JSON-schema, regex and choice corpus of test_structured_outputs.py (plain data).

Each schema entry: (name, prompt, schema). Strings and arrays are bounded where an unbounded
one would let a 135M-parameter model ramble until max_tokens; the grammar is what is tested.
"""

NAME = {"type": "string", "maxLength": 24}

SCHEMAS = [
    ("person", "Give a person's name and age.", {
        "type": "object",
        "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}),
    ("boolean_flag", "Is water wet?", {
        "type": "object", "properties": {"answer": {"type": "boolean"}},
        "required": ["answer"], "additionalProperties": False}),
    ("enum_color", "Pick a color.", {
        "type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"], "additionalProperties": False}),
    ("const_version", "Describe the API version.", {
        "type": "object",
        "properties": {"version": {"const": "v2"}, "stable": {"type": "boolean"}},
        "required": ["version", "stable"], "additionalProperties": False}),
    ("integer_bounds", "Pick a dice roll.", {
        "type": "object", "properties": {"roll": {"type": "integer", "minimum": 1, "maximum": 6}},
        "required": ["roll"], "additionalProperties": False}),
    ("number_bounds", "Give a temperature in Celsius.", {
        "type": "object",
        "properties": {"celsius": {"type": "number", "minimum": -50, "maximum": 60}},
        "required": ["celsius"], "additionalProperties": False}),
    ("exclusive_bounds", "Give a probability.", {
        "type": "object",
        "properties": {"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
        "required": ["p"], "additionalProperties": False}),
    ("array_min_max", "List three fruits.", {
        "type": "object",
        "properties": {"fruits": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 4}},
        "required": ["fruits"], "additionalProperties": False}),
    ("array_of_ints", "List some prime numbers.", {
        "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000},
        "minItems": 3, "maxItems": 5}),
    ("nested_address", "Give a person with an address.", {
        "type": "object",
        "properties": {
            "name": NAME,
            "address": {
                "type": "object",
                "properties": {"street": NAME, "city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street", "city", "zip"], "additionalProperties": False},
        },
        "required": ["name", "address"], "additionalProperties": False}),
    ("deeply_nested", "Describe a company.", {
        "type": "object",
        "properties": {"company": {"type": "object", "properties": {
            "ceo": {"type": "object", "properties": {"name": NAME}, "required": ["name"],
                    "additionalProperties": False},
            "employees": {"type": "integer", "minimum": 1, "maximum": 100000}},
            "required": ["ceo", "employees"], "additionalProperties": False}},
        "required": ["company"], "additionalProperties": False}),
    ("array_of_objects", "List two books with their years.", {
        "type": "object",
        "properties": {"books": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object",
            "properties": {"title": NAME, "year": {"type": "integer", "minimum": 1000, "maximum": 2100}},
            "required": ["title", "year"], "additionalProperties": False}}},
        "required": ["books"], "additionalProperties": False}),
    ("string_pattern", "Give a product code.", {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}},
        "required": ["code"], "additionalProperties": False}),
    ("format_date", "When was the Moon landing?", {
        "type": "object", "properties": {"date": {"type": "string", "format": "date"}},
        "required": ["date"], "additionalProperties": False}),
    ("format_email", "Give a contact email.", {
        "type": "object", "properties": {"email": {"type": "string", "format": "email"}},
        "required": ["email"], "additionalProperties": False}),
    ("format_uuid", "Give a request id.", {
        "type": "object", "properties": {"id": {"type": "string", "format": "uuid"}},
        "required": ["id"], "additionalProperties": False}),
    ("format_date_time", "When does the meeting start?", {
        "type": "object", "properties": {"start": {"type": "string", "format": "date-time"}},
        "required": ["start"], "additionalProperties": False}),
    ("any_of", "Give an identifier: a number or a name.", {
        "type": "object",
        "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9999}, NAME]}},
        "required": ["id"], "additionalProperties": False}),
    ("one_of_shapes", "Describe a shape.", {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}},
             "required": ["kind", "radius"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 100}},
             "required": ["kind", "side"], "additionalProperties": False},
        ]}),
    ("ref_defs", "Give two points.", {
        "$defs": {"point": {"type": "object",
                            "properties": {"x": {"type": "integer", "minimum": -100, "maximum": 100},
                                           "y": {"type": "integer", "minimum": -100, "maximum": 100}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"], "additionalProperties": False}),
    ("ref_recursive", "Give a small tree.", {
        "$defs": {"node": {"type": "object",
                           "properties": {"value": {"type": "integer", "minimum": 0, "maximum": 99},
                                          "children": {"type": "array", "maxItems": 2,
                                                       "items": {"$ref": "#/$defs/node"}}},
                           "required": ["value"], "additionalProperties": False}},
        "$ref": "#/$defs/node"}),
    ("optional_fields", "Describe a movie.", {
        "type": "object",
        "properties": {"title": NAME, "rating": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["title"], "additionalProperties": False}),
    ("nullable", "Give a middle name if any.", {
        "type": "object", "properties": {"middle_name": {"type": ["string", "null"], "maxLength": 16}},
        "required": ["middle_name"], "additionalProperties": False}),
    ("enum_integers", "Pick a weekday number.", {
        "type": "object", "properties": {"day": {"enum": [1, 2, 3, 4, 5, 6, 7]}},
        "required": ["day"], "additionalProperties": False}),
    ("string_lengths", "Give a short nickname.", {
        "type": "object", "properties": {"nick": {"type": "string", "minLength": 3, "maxLength": 8}},
        "required": ["nick"], "additionalProperties": False}),
    ("tuple_prefix_items", "Give a coordinate pair with a label.", {
        "type": "array",
        "prefixItems": [{"type": "number", "minimum": -90, "maximum": 90},
                        {"type": "number", "minimum": -180, "maximum": 180}, NAME],
        "items": False}),
    ("unique_tags", "Give some tags for a blog post.", {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"enum": ["tech", "food", "travel", "news"]},
                                "minItems": 1, "maxItems": 3}},
        "required": ["tags"], "additionalProperties": False}),
    ("all_of", "Give an employee.", {
        "allOf": [
            {"type": "object", "properties": {"name": NAME}, "required": ["name"]},
            {"type": "object", "properties": {"salary": {"type": "integer", "minimum": 0, "maximum": 1000000}},
             "required": ["salary"]},
        ]}),
    ("multiple_of", "Give an even number of minutes.", {
        "type": "object", "properties": {"minutes": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 120}},
        "required": ["minutes"], "additionalProperties": False}),
    ("empty_array_allowed", "List your allergies.", {
        "type": "object",
        "properties": {"allergies": {"type": "array", "items": NAME, "maxItems": 3}},
        "required": ["allergies"], "additionalProperties": False}),
    ("many_fields", "Fill in a user profile.", {
        "type": "object",
        "properties": {
            "username": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,11}$"},
            "email": {"type": "string", "format": "email"},
            "age": {"type": "integer", "minimum": 13, "maximum": 99},
            "verified": {"type": "boolean"},
            "role": {"enum": ["admin", "user", "guest"]},
        },
        "required": ["username", "email", "age", "verified", "role"], "additionalProperties": False}),
    ("order_with_items", "Give a shopping order.", {
        "$defs": {"item": {"type": "object",
                           "properties": {"sku": {"type": "string", "pattern": "^SKU[0-9]{3}$"},
                                          "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                           "required": ["sku", "qty"], "additionalProperties": False}},
        "type": "object",
        "properties": {"order_id": {"type": "string", "format": "uuid"},
                       "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 3},
                       "status": {"enum": ["new", "paid", "shipped"]}},
        "required": ["order_id", "items", "status"], "additionalProperties": False}),
    ("event_any_of_date", "When is the event?", {
        "type": "object",
        "properties": {"when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]}},
        "required": ["when"], "additionalProperties": False}),
    ("top_level_enum", "Rate the sentiment of: I love it.", {"enum": ["positive", "negative", "neutral"]}),
    ("top_level_integer", "How many legs does a spider have?", {"type": "integer", "minimum": 0, "maximum": 100}),
]

REGEXES = [
    ("phone", "My phone number is", r"\+1-[0-9]{3}-[0-9]{3}-[0-9]{4}"),
    ("ipv4", "The server's IP address is", r"((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])"),
    ("date", "Today's date is", r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"),
    ("hex_color", "The hex color of the sky is", r"#[0-9a-f]{6}"),
    ("yes_no_reason", "Is Paris in France? Answer:", r"(Yes|No), because [a-z ]{1,30}\."),
    ("word_list", "Three animals:", r"[a-z]{2,10}(, [a-z]{2,10}){2}"),
]

CHOICES = [
    ("sentiment", "Sentiment of 'great product!':", ["positive", "negative", "neutral"]),
    ("capital", "The capital of France is", ["Paris", "London", "Berlin"]),
    ("yes_no", "Is the sky blue?", ["yes", "no"]),
    ("quoted", "Pick a symbol:", ["a \"quoted\" word", "back\\slash", "new\nline"]),
]
