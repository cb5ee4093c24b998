$StewardLines = @()
try {
    $StewardLines = @(& $StewardOp $StewardPayload)
} catch {
    $StewardLines = @('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = [string]$_.Exception.Message; category = 'error' })))
}
$StewardResult = @($StewardLines | Where-Object { $_ -is [string] -and $_.StartsWith('STEWARD-RESULT ') })
if ($StewardResult.Count -ge 1) {
    Write-Output $StewardResult[$StewardResult.Count - 1]
} else {
    Write-Output ('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = 'the script produced no result line'; category = 'error' })))
}
