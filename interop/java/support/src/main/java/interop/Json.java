package interop;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * One JSON object per line on standard output: the only thing the Rust tests and the benchmark
 * read from these programs (the libraries log to standard error). Like the Rust services'
 * `LOG_FORMAT=json` lines, the event's name is the {@code message} field, so the tests read
 * both with the same helpers. Values are strings, numbers or booleans, so a small writer is
 * enough.
 */
public final class Json {
    private final Map<String, Object> fields = new LinkedHashMap<>();

    /** A line whose {@code message} is {@code name}. */
    public static Json event(String name) {
        Json json = new Json();
        json.fields.put("message", name);
        return json;
    }

    public Json put(String key, Object value) {
        fields.put(key, value);
        return this;
    }

    /** Prints the line; `println` is synchronized, so lines from several threads never mix. */
    public void print() {
        System.out.println(toString());
    }

    @Override
    public String toString() {
        StringBuilder out = new StringBuilder("{");
        boolean first = true;
        for (Map.Entry<String, Object> field : fields.entrySet()) {
            if (!first) {
                out.append(',');
            }
            first = false;
            quote(out, field.getKey());
            out.append(':');
            Object value = field.getValue();
            if (value == null) {
                out.append("null");
            } else if (value instanceof Number || value instanceof Boolean) {
                out.append(value);
            } else {
                quote(out, value.toString());
            }
        }
        return out.append('}').toString();
    }

    private static void quote(StringBuilder out, String text) {
        out.append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }
}
