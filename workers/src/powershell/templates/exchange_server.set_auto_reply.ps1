$config = Get-MailboxAutoReplyConfiguration -Identity ([string]$p.identity)
$start = $null
if ($null -ne $config.StartTime) { $start = ([datetime]$config.StartTime).ToUniversalTime().ToString('o') }
$end = $null
if ($null -ne $config.EndTime) { $end = ([datetime]$config.EndTime).ToUniversalTime().ToString('o') }
$StewardPrior = [ordered]@{
    state = [string]$config.AutoReplyState
    internal_message = [string]$config.InternalMessage
    external_message = [string]$config.ExternalMessage
    external_audience = [string]$config.ExternalAudience
    start_time = $start
    end_time = $end
}
$params = @{ AutoReplyState = [string]$p.state }
$same = [string]$config.AutoReplyState -eq [string]$p.state
$fields = [ordered]@{ internal_message = 'InternalMessage'; external_message = 'ExternalMessage'; external_audience = 'ExternalAudience' }
foreach ($StewardField in $fields.Keys) {
    if (Test-StewardValue $StewardField) {
        $params[$fields[$StewardField]] = [string](Get-StewardValue $StewardField)
        if ([string]$StewardPrior[$StewardField] -cne [string](Get-StewardValue $StewardField)) { $same = $false }
    }
}
foreach ($StewardField in @('start_time', 'end_time')) {
    if (Test-StewardValue $StewardField) {
        $when = [datetime]::Parse([string](Get-StewardValue $StewardField), [Globalization.CultureInfo]::InvariantCulture, [Globalization.DateTimeStyles]::RoundtripKind)
        if ($StewardField -eq 'start_time') { $params['StartTime'] = $when } else { $params['EndTime'] = $when }
        if ($StewardPrior[$StewardField] -ne $when.ToUniversalTime().ToString('o')) { $same = $false }
    }
}
if ($same) {
    return (Out-StewardResult -Status 'unchanged' -Result $StewardPrior -Prior $StewardPrior)
}
Set-MailboxAutoReplyConfiguration -Identity ([string]$p.identity) @params -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ state = [string]$p.state }) -Prior $StewardPrior)
