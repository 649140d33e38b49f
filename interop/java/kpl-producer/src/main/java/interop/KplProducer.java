package interop;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import com.google.common.util.concurrent.FutureCallback;
import com.google.common.util.concurrent.Futures;
import com.google.common.util.concurrent.ListenableFuture;
import com.google.common.util.concurrent.MoreExecutors;
import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.kinesis.producer.KinesisProducer;
import software.amazon.kinesis.producer.KinesisProducerConfiguration;
import software.amazon.kinesis.producer.UserRecordResult;

/**
 * Puts {@code COUNT} DataMessages ({@code {"Id":"<uuid>","CreatedOn":"<RFC 3339>"}}, partition
 * key = Id, the same records the Rust producer writes) through the Kinesis Producer Library:
 * its Java front end starts the native KPL daemon, which aggregates and batches them and sends
 * them over HTTPS. Exits 0 when every record was acknowledged, 1 otherwise.
 *
 * <p>Environment: {@code STREAM_NAME}, {@code COUNT}, {@code KINESIS_HOST} and
 * {@code KINESIS_PORT} (the KPL always uses TLS; certificate verification is off for an
 * emulator's self-signed certificate), {@code AWS_REGION}, {@code AWS_ACCESS_KEY_ID},
 * {@code AWS_SECRET_ACCESS_KEY}; optional {@code LOG_RECORDS} ({@code true}: one
 * {@code record sent} line per user record with its shard and sequence number),
 * {@code AGGREGATION} ({@code true}), {@code MAX_OUTSTANDING} (100000: records handed to the
 * daemon and not yet acknowledged, the back-pressure loop of the KPL README),
 * {@code SOURCE} (written into each message's {@code Source}), {@code RATE_LIMIT} (the KPL's
 * per-shard limit in percent of the Kinesis shard limits, 150 by default; the benchmark raises
 * it out of the way, as it turns the Rust producer's limiter off). CloudWatch metrics are off.
 *
 * <p>Until the daemon has loaded the stream's shard map it sends every record on its own,
 * unaggregated; so first, pairs of messages with one partition key are put until a pair comes
 * back in one aggregate (same sequence number). Those warm-up messages are ordinary
 * DataMessages on the stream too, logged as {@code record sent} with {@code "warmup":true}, and
 * not counted in {@code COUNT} or in the timing.
 *
 * <p>Last line of standard output: {@code {"event":"done","acknowledged":N,"failed":F,"seconds":S}},
 * {@code seconds} from the first of the {@code COUNT} records to the last acknowledgement.
 */
public final class KplProducer {
    public static void main(String[] args) throws Exception {
        String stream = Env.required("STREAM_NAME");
        long count = Env.number("COUNT", 1000);
        boolean logRecords = Boolean.parseBoolean(Env.optional("LOG_RECORDS", "false"));
        long maxOutstanding = Env.number("MAX_OUTSTANDING", 100_000);
        String source = Env.optional("SOURCE", null);

        KinesisProducerConfiguration config = new KinesisProducerConfiguration()
                .setRegion(Env.required("AWS_REGION"))
                .setKinesisEndpoint(Env.required("KINESIS_HOST"))
                .setKinesisPort(Env.number("KINESIS_PORT", 443))
                .setVerifyCertificate(false)
                .setCredentialsProvider(StaticCredentialsProvider.create(AwsBasicCredentials.create(
                        Env.required("AWS_ACCESS_KEY_ID"), Env.required("AWS_SECRET_ACCESS_KEY"))))
                .setMetricsLevel("none")
                // Never used with metrics off; local, so that nothing could reach AWS.
                .setCloudwatchEndpoint("127.0.0.1")
                .setCloudwatchPort(9)
                .setAggregationEnabled(Boolean.parseBoolean(Env.optional("AGGREGATION", "true")))
                .setRateLimit(Env.number("RATE_LIMIT", 150))
                .setLogLevel(Env.optional("KPL_LOG_LEVEL", "warning"));
        boolean aggregation = config.isAggregationEnabled();
        KinesisProducer producer = new KinesisProducer(config);
        if (aggregation) {
            warmUp(producer, stream, source);
        }

        AtomicLong acknowledged = new AtomicLong();
        AtomicLong failed = new AtomicLong();
        CountDownLatch done = new CountDownLatch((int) count);
        long started = System.nanoTime();
        for (long i = 0; i < count; i++) {
            while (producer.getOutstandingRecordsCount() > maxOutstanding) {
                Thread.sleep(1);
            }
            String id = UUID.randomUUID().toString();
            ListenableFuture<UserRecordResult> result = producer.addUserRecord(stream, id, message(id, source));
            Futures.addCallback(result, new FutureCallback<>() {
                @Override
                public void onSuccess(UserRecordResult r) {
                    acknowledged.incrementAndGet();
                    if (logRecords) {
                        Json.event("record sent")
                                .put("id", id)
                                .put("shard_id", r.getShardId())
                                .put("sequence_number", r.getSequenceNumber())
                                .put("attempts", r.getAttempts().size())
                                .print();
                    }
                    done.countDown();
                }

                @Override
                public void onFailure(Throwable t) {
                    failed.incrementAndGet();
                    Json.event("record not sent").put("id", id).put("error", t.toString()).print();
                    done.countDown();
                }
            }, MoreExecutors.directExecutor());
        }
        producer.flush();
        boolean finished = done.await(Env.number("TIMEOUT_SECONDS", 300), TimeUnit.SECONDS);
        double seconds = (System.nanoTime() - started) / 1e9;
        Json.event("done")
                .put("acknowledged", acknowledged.get())
                .put("failed", failed.get())
                .put("finished", finished)
                .put("seconds", seconds)
                .print();
        System.out.flush();
        // destroy() kills the native daemon; wait until it is gone, so that its CPU time is
        // counted in this process's children (the benchmark reads it with wait4).
        List<ProcessHandle> daemons = ProcessHandle.current().children().toList();
        producer.destroy();
        for (ProcessHandle daemon : daemons) {
            daemon.onExit().get(10, TimeUnit.SECONDS);
        }
        System.exit(finished && failed.get() == 0 ? 0 : 1);
    }

    private static ByteBuffer message(String id, String source) {
        String createdOn = Instant.now().truncatedTo(ChronoUnit.MILLIS).toString();
        String json = "{\"Id\":\"" + id + "\",\"CreatedOn\":\"" + createdOn + "\""
                + (source == null ? "" : ",\"Source\":\"" + source + "\"") + "}";
        return ByteBuffer.wrap(json.getBytes(StandardCharsets.UTF_8));
    }

    /** Puts pairs of messages under one partition key until a pair is aggregated (see above). */
    private static void warmUp(KinesisProducer producer, String stream, String source) throws Exception {
        for (int attempt = 0; attempt < 100; attempt++) {
            String key = UUID.randomUUID().toString();
            String[] ids = {UUID.randomUUID().toString(), UUID.randomUUID().toString()};
            List<ListenableFuture<UserRecordResult>> results = List.of(
                    producer.addUserRecord(stream, key, message(ids[0], source)),
                    producer.addUserRecord(stream, key, message(ids[1], source)));
            producer.flush();
            String[] sequenceNumbers = new String[2];
            for (int i = 0; i < 2; i++) {
                UserRecordResult r = results.get(i).get(60, TimeUnit.SECONDS);
                sequenceNumbers[i] = r.getSequenceNumber();
                Json.event("record sent")
                        .put("id", ids[i])
                        .put("shard_id", r.getShardId())
                        .put("sequence_number", r.getSequenceNumber())
                        .put("attempts", r.getAttempts().size())
                        .put("warmup", true)
                        .print();
            }
            if (sequenceNumbers[0].equals(sequenceNumbers[1])) {
                return;
            }
            Thread.sleep(100);
        }
        throw new IllegalStateException("the KPL never aggregated two records: its shard map did not load");
    }
}
