package interop;

import java.net.URI;
import java.time.Duration;
import java.util.List;

import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClient;
import software.amazon.kinesis.leases.LeaseManagementConfig;
import software.amazon.kinesis.worker.metricstats.WorkerMetricStats;
import software.amazon.kinesis.worker.metricstats.delegate.LeaseTableWorkerMetricStatsDAODelegate;
import software.amazon.kinesis.worker.metricstats.delegate.LegacyTableWorkerMetricStatsDAODelegate;

/**
 * Reads every worker-metrics item of an application with the KCL's own data access classes
 * (the lease-table delegate, which scans for {@code entityType = WORKER_METRIC_STATS}, or the
 * {@code <app>-WorkerMetricStats} one) and prints, per item, what a KCL 3.x leader decides from
 * it ({@code MigrationAwareLAMDataManager}, {@code LeaseAssignmentManager}): valid
 * ({@link WorkerMetricStats#isValidWorkerMetric()}), expired after twice the reporter interval
 * ({@link WorkerMetricStats#isExpired(Duration)}), failing
 * ({@link WorkerMetricStats#isAnyWorkerMetricFailing()}), a default worker, and its CPU as the
 * leader averages it. One JSON line per item, then {@code done} with the count; exit 0.
 *
 * <p>Environment: {@code AWS_REGION}, {@code AWS_ACCESS_KEY_ID}, {@code AWS_SECRET_ACCESS_KEY},
 * {@code DYNAMODB_ENDPOINT}, {@code APPLICATION_NAME} (the lease table), {@code LAYOUT}
 * ({@code lease-table} or {@code legacy-table}), {@code REPORTER_INTERVAL_MS} (default 30000,
 * the KCL's).
 */
public final class WorkerMetricsCheck {
    private WorkerMetricsCheck() {}

    public static void main(String[] args) throws Exception {
        Region region = Region.of(Env.required("AWS_REGION"));
        StaticCredentialsProvider credentials = StaticCredentialsProvider.create(AwsBasicCredentials.create(
                Env.required("AWS_ACCESS_KEY_ID"), Env.required("AWS_SECRET_ACCESS_KEY")));
        DynamoDbAsyncClient dynamo = DynamoDbAsyncClient.builder()
                .region(region)
                .credentialsProvider(credentials)
                .endpointOverride(URI.create(Env.required("DYNAMODB_ENDPOINT")))
                .build();
        String application = Env.required("APPLICATION_NAME");
        String layout = Env.required("LAYOUT");
        long interval = Env.number("REPORTER_INTERVAL_MS", 30_000);

        List<WorkerMetricStats> items;
        switch (layout) {
            case "lease-table" -> items = new LeaseTableWorkerMetricStatsDAODelegate(dynamo, application, interval)
                    .getAllWorkerMetricStats();
            case "legacy-table" -> {
                LegacyTableWorkerMetricStatsDAODelegate legacy = new LegacyTableWorkerMetricStatsDAODelegate(
                        dynamo, new LeaseManagementConfig.WorkerMetricsTableConfig(application), interval);
                legacy.initialize();
                items = legacy.getAllWorkerMetricStats();
            }
            default -> {
                System.err.println("configuration error: LAYOUT must be lease-table or legacy-table: " + layout);
                System.exit(2);
                return;
            }
        }
        // The leader's expiry: twice the reporter interval (MigrationAwareLAMDataManager).
        Duration expiry = Duration.ofMillis(2 * interval);
        for (WorkerMetricStats item : items) {
            boolean valid = item.isValidWorkerMetric();
            boolean usingDefault = item.isUsingDefaultWorkerMetric();
            Json line = Json.event("worker metrics")
                    .put("worker_id", item.getWorkerId())
                    .put("valid", valid)
                    .put("expired", item.isExpired(expiry))
                    .put("default", usingDefault)
                    .put("last_update", item.getLastUpdateTime())
                    .put("support_code", item.getSupportCode());
            // Only meaningful for a valid item with metrics, as the leader only looks then.
            if (valid && !usingDefault) {
                line.put("failing", item.isAnyWorkerMetricFailing());
                if (item.containsMetricStat("C")) {
                    line.put("cpu", item.getMetricStat("C"));
                }
            } else {
                line.put("failing", false);
            }
            line.print();
        }
        Json.event("done").put("count", items.size()).print();
        dynamo.close();
        System.exit(0);
    }
}
