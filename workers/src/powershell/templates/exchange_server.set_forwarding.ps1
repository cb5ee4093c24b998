$mailbox = Get-Mailbox -Identity ([string]$p.identity)
$nowAddress = $null
if ($null -ne $mailbox.ForwardingAddress) { $nowAddress = [string]$mailbox.ForwardingAddress.DistinguishedName }
$nowSmtp = $null
if ($null -ne $mailbox.ForwardingSmtpAddress -and [string]$mailbox.ForwardingSmtpAddress -ne '') { $nowSmtp = ([string]$mailbox.ForwardingSmtpAddress) -replace '^(?i)smtp:', '' }
$nowKeep = [bool]$mailbox.DeliverToMailboxAndForward
$StewardPrior = [ordered]@{ forwarding_address = $nowAddress; forwarding_smtp_address = $nowSmtp; deliver_to_mailbox_and_forward = $nowKeep }
$wantAddress = $null
if (Test-StewardValue 'forwarding_address') { $wantAddress = Get-StewardRecipientDn -Identity ([string]$p.forwarding_address) }
$wantSmtp = $null
if (Test-StewardValue 'forwarding_smtp_address') { $wantSmtp = [string]$p.forwarding_smtp_address }
$wantKeep = $false
if (Test-StewardValue 'deliver_to_mailbox_and_forward') { $wantKeep = [bool]$p.deliver_to_mailbox_and_forward }
if ($nowAddress -eq $wantAddress -and $nowSmtp -eq $wantSmtp -and $nowKeep -eq $wantKeep) {
    return (Out-StewardResult -Status 'unchanged' -Result $StewardPrior -Prior $StewardPrior)
}
Set-Mailbox -Identity ([string]$mailbox.DistinguishedName) -ForwardingAddress $wantAddress -ForwardingSmtpAddress $wantSmtp -DeliverToMailboxAndForward $wantKeep -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ forwarding_address = $wantAddress; forwarding_smtp_address = $wantSmtp; deliver_to_mailbox_and_forward = $wantKeep }) -Prior $StewardPrior)
