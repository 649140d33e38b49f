package interop;

/** Settings come from environment variables, like the Rust services'; a missing one stops the program (exit 2). */
public final class Env {
    private Env() {}

    public static String required(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            System.err.println("configuration error: " + name + " is not set");
            System.exit(2);
        }
        return value;
    }

    public static String optional(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }

    public static long number(String name, long fallback) {
        String value = optional(name, null);
        if (value == null) {
            return fallback;
        }
        try {
            return Long.parseLong(value.trim());
        } catch (NumberFormatException e) {
            System.err.println("configuration error: " + name + " is not a whole number: " + value);
            System.exit(2);
            return fallback;
        }
    }
}
