// Dapr's Java SDK (io.dapr:dapr-sdk), unchanged, against the sidecar named
// by DAPR_GRPC_PORT / DAPR_HTTP_PORT (and DAPR_API_TOKEN). Run by
// tests/tests/dapr_sdks.rs in Java's source-file mode, with the classpath
// scripts/sdks.sh resolved from pom.xml:
//
//     java -cp CLASSPATH SdkCheck.java state STORE KEY_PREFIX
//     java -cp CLASSPATH SdkCheck.java invoke APP_ID METHOD
//
// First it waits for the sidecar as the SDK offers (waitForSidecar: GET
// /v1.0/healthz/outbound). "state" saves, reads, deletes and transacts
// state; "invoke" POSTs {"from":"java","n":42} to the app's method. Prints
// one JSON line as its last line: what it read back (values as text, a
// missing key as null), or {"java": <the app's answer>}. Exits 1 with the
// error on stderr when a call fails. The SDK's default serializer stores
// values as JSON.

import com.fasterxml.jackson.databind.ObjectMapper;
import io.dapr.client.DaprClient;
import io.dapr.client.DaprClientBuilder;
import io.dapr.client.domain.HttpExtension;
import io.dapr.client.domain.State;
import io.dapr.client.domain.TransactionalStateOperation;
import io.dapr.client.domain.TransactionalStateOperation.OperationType;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public class SdkCheck {
    static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) {
        if (args.length != 3 || !(args[0].equals("state") || args[0].equals("invoke"))) {
            System.err.println("usage: SdkCheck.java state STORE KEY_PREFIX | SdkCheck.java invoke APP_ID METHOD");
            System.exit(2);
        }
        try (DaprClient c = new DaprClientBuilder().build()) {
            c.waitForSidecar(30_000).block();
            Object out = args[0].equals("state") ? state(c, args[1], args[2]) : invoke(c, args[1], args[2]);
            System.out.println(JSON.writeValueAsString(out));
            System.out.flush();
        } catch (Throwable t) {
            System.err.print("SdkCheck.java: ");
            t.printStackTrace();
            System.exit(1);
        }
        // The SDK's gRPC threads would keep the JVM alive.
        System.exit(0);
    }

    static Object invoke(DaprClient c, String app, String method) {
        Map<String, Object> body = Map.of("from", "java", "n", 42);
        Object answer = c.invokeMethod(app, method, body, HttpExtension.POST, Map.class).block();
        return Map.of("java", answer);
    }

    static Object state(DaprClient c, String store, String prefix) throws Exception {
        String k1 = prefix + "-java-k1", k2 = prefix + "-java-k2", k3 = prefix + "-java-k3";
        Map<String, Object> out = new LinkedHashMap<>();
        c.saveState(store, k1, "v1").block();
        c.saveState(store, k2, Map.of("n", 2, "by", "java")).block();
        out.put("k1", read(c, store, k1));
        out.put("k2", read(c, store, k2));
        c.deleteState(store, k1).block();
        out.put("k1_after_delete", read(c, store, k1));
        List<TransactionalStateOperation<?>> ops = List.of(
            new TransactionalStateOperation<>(OperationType.UPSERT, new State<>(k3, Map.of("tx", "java"), "")),
            new TransactionalStateOperation<>(OperationType.DELETE, new State<>(k2)));
        c.executeStateTransaction(store, ops).block();
        out.put("k2_after_tx", read(c, store, k2));
        out.put("k3_after_tx", read(c, store, k3));
        return out;
    }

    /** The value of key as text (a JSON value other than a string as JSON), or null. */
    static String read(DaprClient c, String store, String key) throws Exception {
        State<Object> s = c.getState(store, key, Object.class).block();
        if (s == null || s.getValue() == null) {
            return null;
        }
        Object v = s.getValue();
        return v instanceof String ? (String) v : JSON.writeValueAsString(v);
    }
}
